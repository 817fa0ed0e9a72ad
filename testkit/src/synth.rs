//! Synthesized tool-call and refusal streams, on both wires: a model that
//! asks for one tool with the given arguments, streamed in pieces as the
//! providers do (or cut by `max_tokens` inside them), and a model that
//! declines.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::script::{Body, Reply};
use crate::sse::{self, MOCK_CREATED, MOCK_ID, MOCK_MODEL};

/// `arguments` in about three pieces (on character boundaries).
fn pieces(arguments: &str) -> Vec<String> {
    let chars: Vec<char> = arguments.chars().collect();
    let step = chars.len().div_ceil(3).max(1);
    chars.chunks(step).map(|c| c.iter().collect()).collect()
}

/// The pieces of `arguments` a stream sends: all of them, or when `cut`
/// (the provider reached `max_tokens` inside them) the first two of three,
/// at least one.
fn sent_pieces(arguments: &str, cut: bool) -> Vec<String> {
    let mut parts = pieces(arguments);
    if cut {
        parts.truncate(parts.len().saturating_sub(1).max(1));
    }
    parts
}

/// OpenAI: the call announced with its id and name, the arguments in
/// pieces, `finish_reason: "tool_calls"` (`"length"` when `cut`), usage
/// (prompt 10), `[DONE]`.
pub(crate) fn openai_tool_call(id: &str, name: &str, arguments: &str, cut: bool) -> Vec<Bytes> {
    let mut events = vec![sse::chunk(
        json!({"role": "assistant", "content": null, "tool_calls": [{
            "index": 0, "id": id, "type": "function",
            "function": {"name": name, "arguments": ""},
        }]}),
        None,
    )];
    let parts = sent_pieces(arguments, cut);
    for p in &parts {
        events.push(sse::chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}),
            None,
        ));
    }
    let finish = if cut { "length" } else { "tool_calls" };
    events.push(sse::chunk(json!({}), Some(finish)));
    let n = parts.len() + 5;
    events.push(Bytes::from(format!(
        "data: {}\n\n",
        json!({
            "id": MOCK_ID, "object": "chat.completion.chunk", "created": MOCK_CREATED,
            "model": MOCK_MODEL, "system_fingerprint": null, "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n},
        })
    )));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

fn named(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// Anthropic: `message_start`, a `tool_use` block whose input arrives as
/// `input_json_delta` pieces, `message_delta` with `stop_reason: "tool_use"`
/// (`"max_tokens"` when `cut`), `message_stop`.
pub(crate) fn anthropic_tool_call(id: &str, name: &str, arguments: &str, cut: bool) -> Vec<Bytes> {
    let mut events = vec![named(
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": crate::anthropic::MOCK_ID, "type": "message", "role": "assistant",
            "model": crate::anthropic::MOCK_MODEL, "content": [], "stop_reason": null,
            "stop_sequence": null,
            "usage": {"input_tokens": crate::anthropic::MOCK_INPUT_TOKENS, "output_tokens": 1},
        }}),
    )];
    events.push(named(
        "content_block_start",
        &json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
    ));
    events.push(named("ping", &json!({"type": "ping"})));
    let parts = sent_pieces(arguments, cut);
    for p in &parts {
        events.push(named(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": p}}),
        ));
    }
    events.push(named(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(named(
        "message_delta",
        &json!({"type": "message_delta",
                "delta": {"stop_reason": if cut { "max_tokens" } else { "tool_use" }, "stop_sequence": null},
                "usage": {"output_tokens": parts.len() + 5}}),
    ));
    events.push(named("message_stop", &json!({"type": "message_stop"})));
    events
}

/// OpenAI: a role chunk (`refusal: ""`, as OpenAI opens one), a
/// `delta.refusal` chunk per word, `finish_reason: "stop"`, usage (prompt
/// 10, completion `words.len()`), `[DONE]`.
pub(crate) fn openai_refusal(words: &[&str]) -> Vec<Bytes> {
    let mut events = vec![sse::chunk(
        json!({"role": "assistant", "content": null, "refusal": ""}),
        None,
    )];
    events.extend(
        words
            .iter()
            .map(|w| sse::chunk(json!({ "refusal": w }), None)),
    );
    events.push(sse::chunk(json!({}), Some("stop")));
    events.push(sse::usage_chunk(10, words.len() as u64));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

impl Reply {
    /// A synthesized OpenAI stream in which the model calls tool `name`
    /// (call id `id`) with `arguments` (JSON text, streamed in pieces).
    pub fn tool_call(id: &str, name: &str, arguments: &str) -> Reply {
        Reply::from_body(Body::Events(openai_tool_call(id, name, arguments, false)))
    }

    /// Like [`Reply::tool_call`], on the Anthropic wire (a `tool_use` block).
    pub fn anthropic_tool_call(id: &str, name: &str, arguments: &str) -> Reply {
        Reply::from_body(Body::Events(anthropic_tool_call(
            id, name, arguments, false,
        )))
    }

    /// Like [`Reply::tool_call`], but the provider reached `max_tokens`
    /// inside the arguments: only their first pieces are sent (two of
    /// three), then `finish_reason: "length"`.
    pub fn tool_call_cut(id: &str, name: &str, arguments: &str) -> Reply {
        Reply::from_body(Body::Events(openai_tool_call(id, name, arguments, true)))
    }

    /// Like [`Reply::tool_call_cut`], on the Anthropic wire (`stop_reason:
    /// "max_tokens"`).
    pub fn anthropic_tool_call_cut(id: &str, name: &str, arguments: &str) -> Reply {
        Reply::from_body(Body::Events(anthropic_tool_call(id, name, arguments, true)))
    }

    /// A synthesized OpenAI stream in which the model declines: one
    /// `delta.refusal` chunk per word, `finish_reason: "stop"`.
    pub fn refusal(words: &[&str]) -> Reply {
        Reply::from_body(Body::Events(openai_refusal(words)))
    }

    /// The Anthropic form of a refusal: a text block with one `text_delta`
    /// per word and `stop_reason: "refusal"` (Anthropic has no refusal
    /// delta).
    pub fn anthropic_refusal(words: &[&str]) -> Reply {
        Reply::from_body(Body::Events(crate::anthropic::synth_text_ending(
            words, "refusal",
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_wires_assemble_into_the_call() {
        let args = r#"{"order_id": 7}"#;
        let m = crate::anthropic::message_from_events(&anthropic_tool_call(
            "toolu_1", "lookup", args, false,
        ));
        assert_eq!(m["stop_reason"], "tool_use");
        assert_eq!(
            m["content"][0],
            json!({"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"order_id": 7}})
        );
        let c = sse::completion_from_events(&openai_tool_call("call_1", "lookup", args, false));
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        let call = &c["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["id"], "call_1");
        assert_eq!(call["function"]["name"], "lookup");
        assert_eq!(call["function"]["arguments"], args);
        assert_eq!(pieces("ab").concat(), "ab");
        assert!(pieces("").is_empty());
    }

    #[test]
    fn a_cut_call_stops_inside_its_arguments() {
        let args = r#"{"order_id": 7}"#;
        let c = sse::completion_from_events(&openai_tool_call("call_1", "lookup", args, true));
        assert_eq!(c["choices"][0]["finish_reason"], "length");
        let sent = c["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(args.starts_with(&sent) && sent.len() < args.len(), "{sent}");
        let m = crate::anthropic::message_from_events(&anthropic_tool_call(
            "toolu_1", "lookup", args, true,
        ));
        assert_eq!(m["stop_reason"], "max_tokens");
        assert_eq!(sent_pieces("a", true), ["a"]);
    }

    #[test]
    fn refusals_on_both_wires() {
        let c = sse::completion_from_events(&openai_refusal(&["I can't", " help."]));
        assert_eq!(c["choices"][0]["message"]["refusal"], "I can't help.");
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
        let m = crate::anthropic::message_from_events(&crate::anthropic::synth_text_ending(
            &["I can't", " help."],
            "refusal",
        ));
        assert_eq!(m["stop_reason"], "refusal");
        assert_eq!(m["content"][0]["text"], "I can't help.");
    }
}
