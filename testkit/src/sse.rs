//! SSE event helpers: splitting recorded bodies, synthesizing OpenAI
//! streams, the `Truncate`/`OmitUsage` transforms and the non-streaming
//! `chat.completion` built from a stream.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Map, Value, json};

/// `id`, `created` and `model` of synthesized chunks.
pub(crate) const MOCK_ID: &str = "chatcmpl-sluice-mock";
pub(crate) const MOCK_CREATED: u64 = 1_700_000_000;
pub(crate) const MOCK_MODEL: &str = "mock-model";

/// The bytes that replace an event for `Fault::MalformedAt`.
pub(crate) const GARBAGE: &[u8] = b"data: {not json\n\n";

/// The in-stream error chunk of `Fault::ErrorEventAfter` on the OpenAI wire.
pub(crate) const ERROR_EVENT: &[u8] = b"data: {\"error\":{\"message\":\"The server had an error while processing your request. Sorry about that!\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n";

/// Splits an SSE body into events, each keeping its terminating blank line.
/// Lines end in `\n` or `\r\n`. Leading blank lines stay with the first
/// event, trailing ones with the last; a last event without a terminating
/// blank line gets one appended.
pub(crate) fn split_events(body: &[u8]) -> Vec<Bytes> {
    let mut events = Vec::new();
    let mut start = 0;
    let mut has_content = false;
    let mut pos = 0;
    while pos < body.len() {
        let (line_end, next) = match body[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => (pos + i, pos + i + 1),
            None => (body.len(), body.len()),
        };
        let line = &body[pos..line_end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() && next > line_end {
            if has_content {
                events.push(Bytes::copy_from_slice(&body[start..next]));
                start = next;
                has_content = false;
            }
        } else {
            has_content = true;
        }
        pos = next;
    }
    if start < body.len() {
        let mut tail = body[start..].to_vec();
        if has_content {
            let fix: &[u8] = if tail.ends_with(b"\r\n") {
                b"\r\n"
            } else if tail.ends_with(b"\n") {
                b"\n"
            } else {
                b"\n\n"
            };
            tail.extend_from_slice(fix);
            events.push(Bytes::from(tail));
        } else if let Some(last) = events.last_mut() {
            let mut joined = last.to_vec();
            joined.extend_from_slice(&tail);
            *last = Bytes::from(joined);
        }
        // Blank lines only and no event at all: nothing to send.
    }
    events
}

/// The data of an event: its `data:` lines joined with `\n`, or `None` if
/// it has none.
pub(crate) fn event_data(event: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(event);
    let mut data: Option<String> = None;
    for line in text.lines() {
        let value = if line == "data" {
            ""
        } else if let Some(v) = line.strip_prefix("data:") {
            v.strip_prefix(' ').unwrap_or(v)
        } else {
            continue;
        };
        match &mut data {
            Some(d) => {
                d.push('\n');
                d.push_str(value);
            }
            None => data = Some(value.to_owned()),
        }
    }
    data
}

pub(crate) fn event_json(event: &[u8]) -> Option<Value> {
    serde_json::from_str(&event_data(event)?).ok()
}

fn has_usage(v: &Value) -> bool {
    v.get("usage").is_some_and(|u| !u.is_null())
}

/// Applies `Fault::Truncate` and `Fault::OmitUsage` to a list of events.
/// An Anthropic `message_delta` carries the stop reason with the usage, so
/// `Truncate` strips its usage instead of removing it (as `OmitUsage` does).
pub(crate) fn transform(events: &[Bytes], truncate: bool, omit_usage: bool) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(events.len());
    for ev in events {
        let data = event_data(ev);
        let json = data
            .as_deref()
            .and_then(|d| serde_json::from_str::<Value>(d).ok());
        let message_delta = json
            .as_ref()
            .is_some_and(|v| v.get("type").and_then(Value::as_str) == Some("message_delta"));
        if truncate {
            let done = data.as_deref().is_some_and(|d| d.trim() == "[DONE]")
                || json.as_ref().is_some_and(crate::anthropic::is_stop);
            if done || (!message_delta && json.as_ref().is_some_and(has_usage)) {
                continue;
            }
        }
        if (omit_usage || (truncate && message_delta))
            && let Some(mut v) = json.filter(has_usage)
        {
            let usage_only = v
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(|c| c.is_empty());
            if usage_only {
                continue;
            }
            if let Some(obj) = v.as_object_mut() {
                obj.remove("usage");
            }
            out.push(replace_data(ev, &v.to_string()));
            continue;
        }
        out.push(ev.clone());
    }
    out
}

/// Rebuilds an event with its `data:` lines replaced by one `data: {data}`
/// line (other fields keep their place).
pub(crate) fn replace_data(event: &[u8], data: &str) -> Bytes {
    let text = String::from_utf8_lossy(event);
    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let mut out = String::new();
    let mut placed = false;
    for line in text.lines().filter(|l| !l.is_empty()) {
        if line == "data" || line.starts_with("data:") {
            if !placed {
                out.push_str("data: ");
                out.push_str(data);
                out.push_str(eol);
                placed = true;
            }
        } else {
            out.push_str(line);
            out.push_str(eol);
        }
    }
    out.push_str(eol);
    Bytes::from(out)
}

pub(crate) fn data_event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// An OpenAI `chat.completion.chunk` with one choice.
pub(crate) fn chunk(delta: Value, finish_reason: Option<&str>) -> Bytes {
    data_event(&json!({
        "id": MOCK_ID,
        "object": "chat.completion.chunk",
        "created": MOCK_CREATED,
        "model": MOCK_MODEL,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
    }))
}

pub(crate) fn role_chunk() -> Bytes {
    chunk(json!({"role": "assistant", "content": ""}), None)
}

pub(crate) fn content_chunk(token: &str) -> Bytes {
    chunk(json!({ "content": token }), None)
}

/// A usage-only chunk (`choices: []`), as `include_usage` streams end.
pub(crate) fn usage_chunk(prompt: u64, completion: u64) -> Bytes {
    data_event(&json!({
        "id": MOCK_ID,
        "object": "chat.completion.chunk",
        "created": MOCK_CREATED,
        "model": MOCK_MODEL,
        "system_fingerprint": null,
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
    }))
}

pub(crate) fn synth_text(words: &[&str]) -> Vec<Bytes> {
    let mut events = vec![role_chunk()];
    events.extend(words.iter().map(|w| content_chunk(w)));
    events.push(chunk(json!({}), Some("stop")));
    events.push(usage_chunk(10, words.len() as u64));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

#[derive(Default)]
struct ChoiceAcc {
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: BTreeMap<u64, Value>,
    finish_reason: Value,
}

/// A non-streaming `chat.completion` assembled from stream events: content
/// concatenated, tool calls merged, last finish_reason and usage kept.
pub(crate) fn completion_from_events(events: &[Bytes]) -> Value {
    let mut head = Map::new();
    let mut choices: BTreeMap<u64, ChoiceAcc> = BTreeMap::new();
    let mut usage = Value::Null;
    for v in events.iter().filter_map(|e| event_json(e)) {
        for key in ["id", "created", "model", "system_fingerprint"] {
            if let Some(x) = v.get(key).filter(|x| !x.is_null()) {
                head.entry(key).or_insert_with(|| x.clone());
            }
        }
        if has_usage(&v) {
            usage = v["usage"].clone();
        }
        for c in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let acc = choices.entry(c["index"].as_u64().unwrap_or(0)).or_default();
            let delta = &c["delta"];
            if let Some(s) = delta["content"].as_str() {
                acc.content.get_or_insert_default().push_str(s);
            }
            if let Some(s) = delta["refusal"].as_str() {
                acc.refusal.get_or_insert_default().push_str(s);
            }
            for tc in delta["tool_calls"].as_array().into_iter().flatten() {
                merge_tool_call(&mut acc.tool_calls, tc);
            }
            if !c["finish_reason"].is_null() {
                acc.finish_reason = c["finish_reason"].clone();
            }
        }
    }
    if choices.is_empty() {
        choices.insert(0, ChoiceAcc::default());
    }
    let choices: Vec<Value> = choices
        .into_iter()
        .map(|(index, acc)| {
            let content = match (&acc.content, acc.tool_calls.is_empty()) {
                (Some(s), false) if s.is_empty() => Value::Null,
                (Some(s), _) => Value::String(s.clone()),
                (None, _) => Value::Null,
            };
            let mut message = json!({"role": "assistant", "content": content, "refusal": acc.refusal});
            if !acc.tool_calls.is_empty() {
                message["tool_calls"] = Value::Array(acc.tool_calls.into_values().collect());
            }
            json!({"index": index, "message": message, "logprobs": null, "finish_reason": acc.finish_reason})
        })
        .collect();
    json!({
        "id": head.get("id").cloned().unwrap_or_else(|| json!(MOCK_ID)),
        "object": "chat.completion",
        "created": head.get("created").cloned().unwrap_or_else(|| json!(MOCK_CREATED)),
        "model": head.get("model").cloned().unwrap_or_else(|| json!(MOCK_MODEL)),
        "system_fingerprint": head.get("system_fingerprint").cloned().unwrap_or(Value::Null),
        "choices": choices,
        "usage": usage,
    })
}

fn merge_tool_call(calls: &mut BTreeMap<u64, Value>, delta: &Value) {
    let index = delta["index"].as_u64().unwrap_or(0);
    let call = calls.entry(index).or_insert_with(
        || json!({"id": null, "type": "function", "function": {"name": null, "arguments": ""}}),
    );
    for key in ["id", "type"] {
        if let Some(x) = delta.get(key).filter(|x| !x.is_null()) {
            call[key] = x.clone();
        }
    }
    if let Some(name) = delta["function"]["name"].as_str() {
        call["function"]["name"] = json!(name);
    }
    if let Some(args) = delta["function"]["arguments"].as_str() {
        let mut joined = call["function"]["arguments"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        joined.push_str(args);
        call["function"]["arguments"] = json!(joined);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_bytes_and_completes_last_event() {
        let body = b"\ndata: a\n\nevent: x\r\ndata: b\r\n\r\ndata: c";
        let ev = split_events(body);
        assert_eq!(ev.len(), 3);
        assert_eq!(&ev[0][..], b"\ndata: a\n\n");
        assert_eq!(&ev[1][..], b"event: x\r\ndata: b\r\n\r\n");
        assert_eq!(&ev[2][..], b"data: c\n\n");
        assert_eq!(
            split_events(b"data: a\n\n\n\n").concat(),
            b"data: a\n\n\n\n"
        );
        assert_eq!(&split_events(b"data: a\n")[0][..], b"data: a\n\n");
        assert!(split_events(b"").is_empty());
        assert!(split_events(b"\n\n").is_empty());
    }

    #[test]
    fn data_lines_are_joined() {
        assert_eq!(
            event_data(b"event: e\ndata: a\ndata:b\n\n").as_deref(),
            Some("a\nb")
        );
        assert_eq!(event_data(b": comment\n\n"), None);
    }

    #[test]
    fn omit_usage_strips_key_of_mixed_chunk() {
        let ev = vec![Bytes::from_static(
            b"event: m\ndata: {\"choices\":[{\"index\":0}],\"usage\":{\"a\":1}}\n\n",
        )];
        let out = transform(&ev, false, true);
        assert_eq!(
            &out[0][..],
            b"event: m\ndata: {\"choices\":[{\"index\":0}]}\n\n"
        );
    }
}
