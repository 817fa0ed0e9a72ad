//! The Anthropic Messages wire of the mock (`POST …/messages`): synthesized
//! streams, error bodies, and the non-streaming `message` built from a
//! stream.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::http::reason;
use crate::sse::event_json;

/// `id` and `model` of synthesized messages.
pub(crate) const MOCK_ID: &str = "msg_sluice_mock";
pub(crate) const MOCK_MODEL: &str = "mock-claude";
/// `input_tokens` reported by synthesized streams.
pub(crate) const MOCK_INPUT_TOKENS: u64 = 10;

/// The in-stream error of `Fault::ErrorEventAfter`: Anthropic's
/// `overloaded_error`, as sent mid-stream when the API is overloaded.
pub(crate) const ERROR_EVENT: &[u8] = b"event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n";

/// One named event: `event: {name}\ndata: {data}\n\n`.
pub(crate) fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

pub(crate) fn message_start() -> Bytes {
    message_start_with(MOCK_INPUT_TOKENS)
}

/// `message_start` reporting `input_tokens` input tokens.
pub(crate) fn message_start_with(input_tokens: u64) -> Bytes {
    event(
        "message_start",
        &json!({
            "type": "message_start",
            "message": {
                "id": MOCK_ID,
                "type": "message",
                "role": "assistant",
                "model": MOCK_MODEL,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1},
            },
        }),
    )
}

fn text_block_start() -> Bytes {
    event(
        "content_block_start",
        &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    )
}

fn ping() -> Bytes {
    event("ping", &json!({"type": "ping"}))
}

/// A `text_delta` of content block 0.
pub(crate) fn text_delta(text: &str) -> Bytes {
    event(
        "content_block_delta",
        &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
    )
}

/// What an endless stream sends before its deltas.
pub(crate) fn flood_prelude() -> Vec<Bytes> {
    vec![message_start(), text_block_start(), ping()]
}

/// message_start, a text block with one delta per word, message_delta
/// (`end_turn`, cumulative `output_tokens` = `words.len()`), message_stop.
pub(crate) fn synth_text(words: &[&str]) -> Vec<Bytes> {
    synth_text_ending(words, "end_turn")
}

/// [`synth_text`] with another `stop_reason` (e.g. `refusal`).
pub(crate) fn synth_text_ending(words: &[&str], stop_reason: &str) -> Vec<Bytes> {
    let mut events = flood_prelude();
    events.extend(words.iter().map(|w| text_delta(w)));
    events.push(event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(event(
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": {"output_tokens": words.len()},
        }),
    ));
    events.push(event("message_stop", &json!({"type": "message_stop"})));
    events
}

/// An Anthropic-shaped JSON error body for `status`:
/// `{"type":"error","error":{"type","message"}}`.
pub(crate) fn error_body(status: u16, message: Option<&str>) -> Vec<u8> {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        _ if status >= 500 => "api_error",
        _ => "invalid_request_error",
    };
    let message = message.map(str::to_owned).unwrap_or_else(|| match status {
        529 => "Overloaded".to_owned(),
        _ => format!("Mock provider error {status} {}", reason(status)),
    });
    json!({"type": "error", "error": {"type": kind, "message": message}})
        .to_string()
        .into_bytes()
}

/// Whether an event ends the message (`message_stop`), for `Fault::Truncate`.
pub(crate) fn is_stop(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("message_stop")
}

/// A non-streaming `message` assembled from stream events: text blocks
/// concatenated, tool inputs parsed from their fragments, the last stop
/// reason and usage kept.
pub(crate) fn message_from_events(events: &[Bytes]) -> Value {
    let mut message = json!({
        "id": MOCK_ID,
        "type": "message",
        "role": "assistant",
        "model": MOCK_MODEL,
        "content": [],
        "stop_reason": null,
        "stop_sequence": null,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    });
    // (block, concatenated partial_json) by index.
    let mut blocks: Vec<(u64, Value, String)> = Vec::new();
    for v in events.iter().filter_map(|e| event_json(e)) {
        let index = v["index"].as_u64().unwrap_or(0);
        match v["type"].as_str() {
            Some("message_start") => {
                for key in ["id", "model", "usage"] {
                    if let Some(x) = v["message"].get(key).filter(|x| !x.is_null()) {
                        message[key] = x.clone();
                    }
                }
            }
            Some("content_block_start") => {
                blocks.push((index, v["content_block"].clone(), String::new()));
            }
            Some("content_block_delta") => {
                let Some((_, block, json)) = blocks.iter_mut().rfind(|b| b.0 == index) else {
                    continue;
                };
                let delta = &v["delta"];
                if let Some(t) = delta["text"].as_str() {
                    let joined = format!("{}{t}", block["text"].as_str().unwrap_or(""));
                    block["text"] = json!(joined);
                }
                if let Some(p) = delta["partial_json"].as_str() {
                    json.push_str(p);
                }
            }
            Some("message_delta") => {
                for key in ["stop_reason", "stop_sequence"] {
                    if let Some(x) = v["delta"].get(key) {
                        message[key] = x.clone();
                    }
                }
                if let Some(usage) = v["usage"].as_object() {
                    for (k, x) in usage {
                        message["usage"][k] = x.clone();
                    }
                }
            }
            _ => {}
        }
    }
    message["content"] = blocks
        .into_iter()
        .map(|(_, mut block, json)| {
            if block["type"] == "tool_use" && !json.is_empty() {
                block["input"] = serde_json::from_str(&json).unwrap_or(Value::Null);
            }
            block
        })
        .collect();
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthesized_text_assembles_into_a_message() {
        let m = message_from_events(&synth_text(&["Hel", "lo"]));
        assert_eq!(m["content"], json!([{"type": "text", "text": "Hello"}]));
        assert_eq!(m["stop_reason"], "end_turn");
        assert_eq!(m["usage"], json!({"input_tokens": 10, "output_tokens": 2}));
    }

    #[test]
    fn error_types_follow_the_status() {
        let kind = |s| {
            let v: Value = serde_json::from_slice(&error_body(s, None)).unwrap();
            assert_eq!(v["type"], "error");
            v["error"]["type"].as_str().unwrap().to_owned()
        };
        assert_eq!(kind(529), "overloaded_error");
        assert_eq!(kind(429), "rate_limit_error");
        assert_eq!(kind(500), "api_error");
        assert_eq!(kind(413), "request_too_large");
        assert_eq!(kind(401), "authentication_error");
    }
}
