//! The Messages stream: run events as Anthropic's stream events
//! (`message_start`, content blocks with increasing indexes,
//! `message_delta`, `message_stop`), and the `message` those events
//! assemble to, which is the non-streamed answer: the two cannot differ.

use bytes::{BufMut, BytesMut};
use serde_json::{Value, json};
use tracing::warn;

use super::anthropic_compat::{error_type, status_of};
use crate::provider::ErrorKind;
use crate::run::{ErrorCode, Event, ToolCallDelta, UsageReport};

/// Sluice's finish reason (and whether the model refused) as Anthropic's
/// `stop_reason`.
fn stop_reason(finish: &str, refused: bool) -> &'static str {
    match finish {
        "stop" if refused => "refusal",
        "length" | "tool_limit" => "max_tokens",
        "tool_calls" => "tool_use",
        "content_filter" => "refusal",
        // The provider paused a long turn; the client continues it.
        "pause_turn" => "pause_turn",
        _ => "end_turn",
    }
}

/// Usage in Anthropic's terms: `input_tokens` excludes the cached part;
/// cache writes split by lifetime (`cache_creation`) when there were any.
fn usage_json(u: &UsageReport) -> Value {
    let cached = u.cache_read_tokens.saturating_add(u.cache_write_tokens);
    let mut v = json!({
        "input_tokens": u.prompt_tokens.saturating_sub(cached),
        "output_tokens": u.completion_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
    });
    if u.cache_write_tokens > 0 {
        v["cache_creation"] = json!({
            "ephemeral_5m_input_tokens": u.cache_write_tokens.saturating_sub(u.cache_write_1h_tokens),
            "ephemeral_1h_input_tokens": u.cache_write_1h_tokens,
        });
    }
    v
}

/// The content block being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text,
    /// `signed` once its signature came: more reasoning opens a new block.
    Thinking {
        signed: bool,
    },
    /// The client's tool call of this index.
    ToolUse(u32),
}

/// Run events as Messages stream events (`message_start`, content blocks
/// with increasing indexes, `message_delta`, `message_stop`).
pub struct MessagesEncoder {
    id: String,
    model: String,
    /// Index of the next content block.
    next_index: u32,
    open: Open,
    /// The client's calls that started while another call's block was
    /// open: (index, id, name, arguments so far), sent whole once the
    /// calls are over.
    held: Vec<(u32, String, String, String)>,
    /// Text and reasoning that came while calls were in flight, sent
    /// after them (see [`MessagesEncoder::tool_piece`]).
    deferred: Vec<Event>,
    usage: Option<UsageReport>,
    /// The model refused (OpenAI's `refusal`): its words are text and the
    /// stop reason says so.
    refused: bool,
    /// The stop sequence the answer stopped on, when the provider said.
    stop_sequence: Option<String>,
    failed: bool,
}

/// One stream event: its name and data (the data's `type` is the name).
pub(super) type Out = Vec<(&'static str, Value)>;

impl MessagesEncoder {
    pub(super) fn new(id: String, model: String) -> Self {
        MessagesEncoder {
            id,
            model,
            next_index: 0,
            open: Open::None,
            held: Vec::new(),
            deferred: Vec::new(),
            usage: None,
            refused: false,
            stop_sequence: None,
            failed: false,
        }
    }

    fn close(&mut self, out: &mut Out) {
        if self.open != Open::None {
            let index = self.next_index - 1;
            out.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
            self.open = Open::None;
        }
    }

    /// Closes the open block and starts `block` as the next one.
    fn start(&mut self, open: Open, block: Value, out: &mut Out) {
        self.close(out);
        out.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": self.next_index, "content_block": block}),
        ));
        self.next_index += 1;
        self.open = open;
    }

    fn delta(&self, delta: Value, out: &mut Out) {
        out.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": self.next_index - 1, "delta": delta}),
        ));
    }

    /// A piece of the client's tool calls. An OpenAI-compatible provider
    /// may interleave the pieces of parallel calls, and send text between
    /// two pieces of one call, which Messages blocks cannot show (a block,
    /// once closed, cannot take more): the first call streams in its
    /// block as it comes, and that block stays open until the provider
    /// says the call is whole ([`Event::ToolCallEnd`], from Anthropic) or
    /// the answer ends, since more of its arguments may follow; a call
    /// that starts while it is open is held and sent whole (in one
    /// `input_json_delta`) after it; text and reasoning that come while
    /// calls are in flight are deferred ([`MessagesEncoder::on`]) and sent
    /// after the calls. So no piece is lost, repeated or misplaced, and
    /// indexes only increase. What is held is bounded as the answer is:
    /// the run cuts a round at its ceiling's guard (text, reasoning and
    /// arguments counted together), at 128 calls and at 256 KiB of
    /// signatures.
    fn tool_piece(&mut self, d: ToolCallDelta, out: &mut Out) {
        let ToolCallDelta {
            index,
            id,
            name,
            arguments,
        } = d;
        if let Some(id) = id {
            let name = name.unwrap_or_default();
            if self.calls_in_flight() {
                self.held.push((index, id, name, arguments));
                return;
            }
            self.start(
                Open::ToolUse(index),
                json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                out,
            );
        } else if let Some(held) = self.held.iter_mut().find(|h| h.0 == index) {
            held.3.push_str(&arguments);
            return;
        } else if self.open != Open::ToolUse(index) {
            // The run starts every call with its id: a piece of a call
            // never started has no block to go to.
            warn!(
                index,
                "arguments of a tool call that never started; dropped"
            );
            return;
        }
        if !arguments.is_empty() {
            self.delta(
                json!({"type": "input_json_delta", "partial_json": arguments}),
                out,
            );
        }
    }

    /// Whether a call's block is open or calls are held: more arguments
    /// may come for them.
    fn calls_in_flight(&self) -> bool {
        matches!(self.open, Open::ToolUse(_)) || !self.held.is_empty()
    }

    /// Ends the streamed call's block, sends the held calls whole, then
    /// what was deferred behind them.
    fn flush_calls(&mut self, out: &mut Out) {
        if matches!(self.open, Open::ToolUse(_)) {
            self.close(out);
        }
        for (index, id, name, arguments) in std::mem::take(&mut self.held) {
            self.start(
                Open::ToolUse(index),
                json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                out,
            );
            if !arguments.is_empty() {
                self.delta(
                    json!({"type": "input_json_delta", "partial_json": arguments}),
                    out,
                );
            }
            self.close(out);
        }
        for ev in std::mem::take(&mut self.deferred) {
            self.content(ev, out);
        }
    }

    fn text(&mut self, text: String, out: &mut Out) {
        if self.open != Open::Text {
            self.start(Open::Text, json!({"type": "text", "text": ""}), out);
        }
        self.delta(json!({"type": "text_delta", "text": text}), out);
    }

    fn thinking_block(&mut self, out: &mut Out) {
        if self.open != (Open::Thinking { signed: false }) {
            self.start(
                Open::Thinking { signed: false },
                json!({"type": "thinking", "thinking": "", "signature": ""}),
                out,
            );
        }
    }

    /// Text or reasoning, in its block (no call is in flight).
    fn content(&mut self, ev: Event, out: &mut Out) {
        match ev {
            Event::Delta(text) => self.text(text, out),
            Event::Refusal(text) => {
                self.refused = true;
                self.text(text, out);
            }
            Event::Reasoning(text) => {
                self.thinking_block(out);
                self.delta(json!({"type": "thinking_delta", "thinking": text}), out);
            }
            Event::ReasoningSignature(signature) => {
                self.thinking_block(out);
                self.delta(
                    json!({"type": "signature_delta", "signature": signature}),
                    out,
                );
                self.open = Open::Thinking { signed: true };
            }
            Event::RedactedReasoning(data) => {
                self.start(
                    Open::Thinking { signed: true },
                    json!({"type": "redacted_thinking", "data": data}),
                    out,
                );
                self.close(out);
            }
            _ => {}
        }
    }

    pub(super) fn on(&mut self, ev: Event, out: &mut Out) {
        match ev {
            Event::Start(start) => {
                // The model that answers, as its provider names it.
                self.model = start.model;
                out.push((
                    "message_start",
                    json!({"type": "message_start", "message": {
                        "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                        "content": [], "stop_reason": null, "stop_sequence": null,
                        // Sluice's estimate; the provider's count comes
                        // with message_delta.
                        "usage": {"input_tokens": start.prompt_tokens, "output_tokens": 0,
                                  "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0},
                    }}),
                ));
            }
            ev @ (Event::Delta(_)
            | Event::Refusal(_)
            | Event::Reasoning(_)
            | Event::ReasoningSignature(_)
            | Event::RedactedReasoning(_)) => {
                if self.calls_in_flight() {
                    self.deferred.push(ev);
                } else {
                    self.content(ev, out);
                }
            }
            Event::ToolCallDelta(d) => self.tool_piece(*d, out),
            // The provider said the call is whole (an Anthropic provider,
            // whose blocks come one after another): its block ends here,
            // and what waited behind it follows in order.
            Event::ToolCallEnd(index) => {
                if self.open == Open::ToolUse(index) && self.held.is_empty() {
                    self.close(out);
                    for ev in std::mem::take(&mut self.deferred) {
                        self.content(ev, out);
                    }
                }
            }
            Event::Usage(u) => self.usage = Some(*u),
            // A cut at the ceiling is an answer: stop_reason max_tokens.
            Event::Error {
                code: ErrorCode::TokenCeiling,
                ..
            } => {}
            Event::Error {
                code,
                message,
                kind,
            } => {
                // What came before the failure is the client's to see.
                self.flush_calls(out);
                self.failed = true;
                let kind = kind.map_or_else(|| error_type(status_of(code)), ErrorKind::as_str);
                out.push((
                    "error",
                    json!({"type": "error", "error": {"type": kind, "message": message}}),
                ));
            }
            Event::Done { finish_reason } => {
                if self.failed {
                    return;
                }
                self.flush_calls(out);
                self.close(out);
                let usage = self.usage.as_ref().map_or(Value::Null, usage_json);
                let (reason, matched) = match self.stop_sequence.take() {
                    Some(s) if finish_reason == "stop" && !self.refused => {
                        ("stop_sequence", Value::String(s))
                    }
                    _ => (stop_reason(&finish_reason, self.refused), Value::Null),
                };
                out.push((
                    "message_delta",
                    json!({"type": "message_delta",
                           "delta": {"stop_reason": reason, "stop_sequence": matched},
                           "usage": usage}),
                ));
                out.push(("message_stop", json!({"type": "message_stop"})));
            }
            Event::KeepAlive => out.push(("ping", json!({"type": "ping"}))),
            Event::StopSequence(s) => self.stop_sequence = Some(s),
            // The pipeline's own tools run inside Sluice: the client sees
            // their effect in the answer. The client's calls came as
            // `ToolCallDelta`s.
            Event::ToolCall(_) | Event::ToolResult(_) => {}
            // The Messages API has neither `n` nor logprobs: its requests
            // never ask for them.
            Event::Choice(_) | Event::ChoiceDone { .. } | Event::Logprobs(_) => {}
        }
    }
}

impl super::sse::Encoder for MessagesEncoder {
    fn encode(&mut self, ev: Event, buf: &mut BytesMut) {
        let mut out = Vec::new();
        self.on(ev, &mut out);
        for (name, data) in out {
            buf.put_slice(b"event: ");
            buf.put_slice(name.as_bytes());
            buf.put_slice(b"\ndata: ");
            if serde_json::to_writer(buf.writer(), &data).is_err() {
                buf.put_slice(b"{}");
            }
            buf.put_slice(b"\n\n");
        }
    }
}

/// A `message` assembled from stream events, as the SDKs assemble one.
#[derive(Default)]
pub(super) struct Assembled {
    pub(super) message: Option<Value>,
    /// Each tool_use block's streamed input JSON, by block index.
    inputs: std::collections::BTreeMap<usize, String>,
}

impl Assembled {
    pub(super) fn apply(&mut self, ev: Value) {
        if ev["type"] == "message_start" {
            self.message = Some(ev["message"].clone());
            return;
        }
        let Some(m) = self.message.as_mut() else {
            return;
        };
        let index = ev["index"].as_u64().unwrap_or(0) as usize;
        match ev["type"].as_str() {
            Some("content_block_start") => {
                if let Some(content) = m["content"].as_array_mut() {
                    content.push(ev["content_block"].clone());
                }
            }
            Some("content_block_delta") => {
                let block = &mut m["content"][index];
                let d = &ev["delta"];
                // In place: rebuilding the string per delta was quadratic.
                let append = |block: &mut Value, key: &str, more: &Value| {
                    let more = more.as_str().unwrap_or_default();
                    match &mut block[key] {
                        Value::String(s) => s.push_str(more),
                        slot => *slot = json!(more),
                    }
                };
                match d["type"].as_str() {
                    Some("text_delta") => append(block, "text", &d["text"]),
                    Some("thinking_delta") => append(block, "thinking", &d["thinking"]),
                    Some("signature_delta") => append(block, "signature", &d["signature"]),
                    Some("input_json_delta") => self
                        .inputs
                        .entry(index)
                        .or_default()
                        .push_str(d["partial_json"].as_str().unwrap_or_default()),
                    _ => {}
                }
            }
            Some("content_block_stop") => {
                if let Some(json) = self.inputs.remove(&index) {
                    // What the model wrote; text when it is not JSON.
                    m["content"][index]["input"] = match serde_json::from_str::<Value>(&json) {
                        Ok(v) => v,
                        Err(_) if json.trim().is_empty() => json!({}),
                        Err(_) => json!(json),
                    };
                }
            }
            Some("message_delta") => {
                m["stop_reason"] = ev["delta"]["stop_reason"].clone();
                m["stop_sequence"] = ev["delta"]["stop_sequence"].clone();
                if let Some(u) = ev["usage"].as_object() {
                    for (k, v) in u {
                        m["usage"][k] = v.clone();
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "anthropic_stream_tests.rs"]
mod tests;
