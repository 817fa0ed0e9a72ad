//! Hostile upstream behaviours (issue 17): bodies that replace the
//! scripted one (huge, endless and many tool calls), rewrites of the events
//! a reply sends (absurd usage, text after the finish, reasoning and refusal
//! deltas) and error bodies that quote the caller's API key.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::fixture::Wire;
use crate::script::Fault;
use crate::{anthropic, sse};

/// Events produced lazily: an endless or a 16 MB body is never held whole.
pub(crate) type Events = Box<dyn Iterator<Item = Bytes> + Send>;

/// The body a fault puts in place of the scripted one, and whether it never
/// ends (the writer then yields to the runtime between events).
pub(crate) fn replacement(faults: &[Fault], wire: Wire) -> Option<(Events, bool)> {
    faults.iter().find_map(|f| match f {
        Fault::HugeToolArguments {
            name,
            bytes,
            fragment,
        } => {
            let args = Pad {
                total: *bytes,
                pos: 0,
                fragment: (*fragment).max(1),
            };
            Some((tool_call(wire, name, args, true), false))
        }
        Fault::EndlessToolArguments { name, fragment } => {
            let piece = "x".repeat((*fragment).max(1));
            let args = std::iter::once("{\"pad\":\"".to_owned()).chain(std::iter::repeat(piece));
            Some((tool_call(wire, name, args, false), true))
        }
        Fault::ManyToolCalls { name, count } => Some((many_calls(wire, name, *count), false)),
        _ => None,
    })
}

/// Whether `faults` rewrite the scripted events (so they are sent from
/// [`rewritten`], at the reply's pace).
pub(crate) fn rewrites(faults: &[Fault]) -> bool {
    faults.iter().any(|f| {
        matches!(
            f,
            Fault::TextAfterFinish { .. } | Fault::Reasoning { .. } | Fault::Refusal { .. }
        )
    })
}

/// `events` with reasoning or refusal deltas before the content and text
/// after the finish, as the faults say.
pub(crate) fn rewritten(mut events: Vec<Bytes>, faults: &[Fault], wire: Wire) -> (Events, bool) {
    for f in faults {
        match (f, wire) {
            (Fault::Reasoning { text, count }, Wire::OpenAi) => {
                let d = sse::chunk(json!({ "reasoning_content": text }), None);
                insert_after_first(&mut events, std::iter::repeat_n(d, *count));
            }
            (Fault::Reasoning { text, count }, Wire::Anthropic) => {
                events = with_thinking(&events, text, *count);
            }
            (Fault::Refusal { text, count }, Wire::OpenAi) => {
                let d = sse::chunk(json!({ "refusal": text }), None);
                insert_after_first(&mut events, std::iter::repeat_n(d, *count));
            }
            _ => {}
        }
    }
    let after = faults.iter().find_map(|f| match f {
        Fault::TextAfterFinish { text, count } => Some((text, *count)),
        _ => None,
    });
    let Some((text, count)) = after else {
        return (Box::new(events.into_iter()), false);
    };
    let end = events
        .iter()
        .position(|e| is_terminator(e))
        .unwrap_or(events.len());
    let tail = events.split_off(end);
    let delta = match wire {
        Wire::OpenAi => sse::content_chunk(text),
        Wire::Anthropic => anthropic::text_delta(text),
    };
    match count {
        Some(n) => (
            Box::new(
                events
                    .into_iter()
                    .chain(std::iter::repeat_n(delta, n))
                    .chain(tail),
            ),
            false,
        ),
        None => (
            Box::new(events.into_iter().chain(std::iter::repeat(delta))),
            true,
        ),
    }
}

fn insert_after_first(events: &mut Vec<Bytes>, extra: impl Iterator<Item = Bytes>) {
    let at = 1.min(events.len());
    events.splice(at..at, extra);
}

/// `[DONE]` or `message_stop`.
fn is_terminator(event: &[u8]) -> bool {
    sse::event_data(event).is_some_and(|d| d.trim() == "[DONE]")
        || sse::event_json(event).is_some_and(|v| anthropic::is_stop(&v))
}

/// Anthropic: a thinking block at index 0 right after `message_start`
/// (with its signature, as the API sends it), later blocks moved up one.
fn with_thinking(events: &[Bytes], text: &str, count: usize) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(events.len() + count + 3);
    let mut started = false;
    for ev in events {
        let v = sse::event_json(ev);
        let kind = v
            .as_ref()
            .and_then(|v| v["type"].as_str().map(str::to_owned));
        if started
            && let (Some(mut v), Some(kind)) = (v, kind.as_deref())
            && kind.starts_with("content_block")
            && let Some(i) = v["index"].as_u64()
        {
            v["index"] = json!(i + 1);
            out.push(sse::replace_data(ev, &v.to_string()));
            continue;
        }
        out.push(ev.clone());
        if !started && kind.as_deref() == Some("message_start") {
            started = true;
            out.push(anthropic::event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
            ));
            let delta = anthropic::event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "thinking_delta", "thinking": text}}),
            );
            out.extend(std::iter::repeat_n(delta, count));
            out.push(anthropic::event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "signature_delta", "signature": "bW9jay1zaWduYXR1cmU="}}),
            ));
            out.push(anthropic::event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": 0}),
            ));
        }
    }
    out
}

/// The argument text of `HugeToolArguments`: exactly `total` bytes of
/// `{"pad":"xxx…"}` (spaces when fewer than 10), in `fragment`-byte pieces.
struct Pad {
    total: usize,
    pos: usize,
    fragment: usize,
}

impl Pad {
    const OPEN: &'static [u8] = b"{\"pad\":\"";
    const CLOSE: &'static [u8] = b"\"}";

    fn byte_at(&self, i: usize) -> u8 {
        if self.total < Self::OPEN.len() + Self::CLOSE.len() {
            b' '
        } else if i < Self::OPEN.len() {
            Self::OPEN[i]
        } else if i >= self.total - Self::CLOSE.len() {
            Self::CLOSE[i - (self.total - Self::CLOSE.len())]
        } else {
            b'x'
        }
    }
}

impl Iterator for Pad {
    type Item = String;
    fn next(&mut self) -> Option<String> {
        if self.pos >= self.total {
            return None;
        }
        let end = self.total.min(self.pos + self.fragment);
        let piece: Vec<u8> = (self.pos..end).map(|i| self.byte_at(i)).collect();
        self.pos = end;
        // Every byte is ASCII.
        Some(String::from_utf8_lossy(&piece).into_owned())
    }
}

/// One tool call (index 0) whose arguments are `args`, then (if `finish`)
/// the tool-call finish with usage and the terminator.
fn tool_call(
    wire: Wire,
    name: &str,
    args: impl Iterator<Item = String> + Send + 'static,
    finish: bool,
) -> Events {
    let name = name.to_owned();
    match wire {
        Wire::OpenAi => {
            let head = vec![openai_call_start(0, &name)];
            let body = args.map(|p| openai_args(0, &p));
            let tail = if finish { openai_finish(1) } else { Vec::new() };
            Box::new(head.into_iter().chain(body).chain(tail))
        }
        Wire::Anthropic => {
            let head = vec![anthropic::message_start(), anthropic_call_start(0, &name)];
            let body = args.map(|p| anthropic_args(0, &p));
            let tail = if finish {
                let mut t = vec![anthropic_block_stop(0)];
                t.extend(anthropic_finish(1));
                t
            } else {
                Vec::new()
            };
            Box::new(head.into_iter().chain(body).chain(tail))
        }
    }
}

fn many_calls(wire: Wire, name: &str, count: usize) -> Events {
    let name = name.to_owned();
    let calls = count as u64;
    match wire {
        Wire::OpenAi => {
            let body = (0..count)
                .flat_map(move |i| [openai_call_start(i, &name), openai_args(i, "{}")].into_iter());
            Box::new(body.chain(openai_finish(calls)))
        }
        Wire::Anthropic => {
            let body = (0..count).flat_map(move |i| {
                [
                    anthropic_call_start(i, &name),
                    anthropic_args(i, "{}"),
                    anthropic_block_stop(i),
                ]
                .into_iter()
            });
            Box::new(
                std::iter::once(anthropic::message_start())
                    .chain(body)
                    .chain(anthropic_finish(calls)),
            )
        }
    }
}

fn openai_call_start(index: usize, name: &str) -> Bytes {
    let delta = json!({"tool_calls": [{
        "index": index, "id": format!("call_{index}"), "type": "function",
        "function": {"name": name, "arguments": ""},
    }]});
    let delta = if index == 0 {
        json!({"role": "assistant", "content": null, "tool_calls": delta["tool_calls"]})
    } else {
        delta
    };
    sse::chunk(delta, None)
}

fn openai_args(index: usize, piece: &str) -> Bytes {
    sse::chunk(
        json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
        None,
    )
}

fn openai_finish(completion: u64) -> Vec<Bytes> {
    vec![
        sse::chunk(json!({}), Some("tool_calls")),
        sse::usage_chunk(10, completion),
        Bytes::from_static(b"data: [DONE]\n\n"),
    ]
}

fn anthropic_call_start(index: usize, name: &str) -> Bytes {
    anthropic::event(
        "content_block_start",
        &json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "tool_use", "id": format!("toolu_{index}"),
                                  "name": name, "input": {}}}),
    )
}

fn anthropic_args(index: usize, piece: &str) -> Bytes {
    anthropic::event(
        "content_block_delta",
        &json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": piece}}),
    )
}

fn anthropic_block_stop(index: usize) -> Bytes {
    anthropic::event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": index}),
    )
}

fn anthropic_finish(output: u64) -> Vec<Bytes> {
    vec![
        anthropic::event(
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                    "usage": {"output_tokens": output}}),
        ),
        anthropic::event("message_stop", &json!({"type": "message_stop"})),
    ]
}

/// A JSON integer for any value from `i64::MIN` to `u64::MAX` (beyond
/// that range, the nearest end).
fn number(v: i128) -> Value {
    if v >= 0 {
        Value::from(u64::try_from(v).unwrap_or(u64::MAX))
    } else {
        Value::from(i64::try_from(v).unwrap_or(i64::MIN))
    }
}

/// `event` with its reported token counts replaced (see
/// [`Fault::AbsurdUsage`]); other events are returned as they are.
pub(crate) fn with_usage(event: &Bytes, prompt: Option<i128>, completion: Option<i128>) -> Bytes {
    let Some(mut v) = sse::event_json(event) else {
        return event.clone();
    };
    let mut changed = false;
    let mut set = |obj: &mut Value, key: &str, to: Option<i128>| {
        if let (Some(o), Some(to)) = (obj.as_object_mut(), to) {
            o.insert(key.to_owned(), number(to));
            changed = true;
        }
    };
    match v["type"].as_str() {
        Some("message_start") => {
            let usage = &mut v["message"]["usage"];
            set(usage, "input_tokens", prompt);
            set(usage, "output_tokens", completion);
        }
        Some("message_delta") => set(&mut v["usage"], "output_tokens", completion),
        _ if v.get("usage").is_some_and(Value::is_object) => {
            let usage = &mut v["usage"];
            let p = prompt.or_else(|| usage["prompt_tokens"].as_i64().map(i128::from));
            let c = completion.or_else(|| usage["completion_tokens"].as_i64().map(i128::from));
            set(usage, "prompt_tokens", prompt);
            set(usage, "completion_tokens", completion);
            if let (Some(p), Some(c)) = (p, c) {
                set(usage, "total_tokens", Some(p.saturating_add(c)));
            }
        }
        _ => {}
    }
    if changed {
        sse::replace_data(event, &v.to_string())
    } else {
        event.clone()
    }
}

/// The header a request's API key travels in, by wire.
pub(crate) fn key_header(wire: Wire) -> &'static str {
    match wire {
        Wire::OpenAi => "authorization",
        Wire::Anthropic => "x-api-key",
    }
}

/// An error body for `status` that quotes the key header's value.
pub(crate) fn key_echo_body(wire: Wire, status: u16, key: &str) -> Vec<u8> {
    let message = match wire {
        Wire::OpenAi => format!("Incorrect API key provided: {key} (header authorization: {key})"),
        Wire::Anthropic => format!("invalid x-api-key: {key}"),
    };
    match wire {
        Wire::OpenAi => crate::http::error_body(status, Some(&message)),
        Wire::Anthropic => anthropic::error_body(status, Some(&message)),
    }
}

/// `event` naming `key` as its model (see [`Fault::EchoKeyModel`]);
/// events that name no model are returned as they are.
pub(crate) fn with_model(event: &Bytes, key: &str) -> Bytes {
    let Some(mut v) = sse::event_json(event) else {
        return event.clone();
    };
    let slot = match v["type"].as_str() {
        Some("message_start") => &mut v["message"],
        _ => &mut v,
    };
    match slot.as_object_mut() {
        Some(o) if o.contains_key("model") => {
            o.insert("model".to_owned(), Value::from(key));
            sse::replace_data(event, &v.to_string())
        }
        _ => event.clone(),
    }
}

/// An in-stream error event whose message quotes the key header's value.
pub(crate) fn key_echo_event(wire: Wire, key: &str) -> Bytes {
    let message = format!(
        "upstream rejected the request with {}: {key}",
        key_header(wire)
    );
    match wire {
        Wire::OpenAi => Bytes::from(format!(
            "data: {}\n\n",
            json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}})
        )),
        Wire::Anthropic => anthropic::event(
            "error",
            &json!({"type": "error", "error": {"type": "api_error", "message": message}}),
        ),
    }
}
