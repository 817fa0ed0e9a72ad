//! Tests of `anthropic_wire.rs`.
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;

use super::super::sse::SseParser;
use super::super::{Message, Role};
use super::*;

fn read(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../fixtures/recorded/anthropic/{name}.sse",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).expect(&path)
}

/// Parses `pieces` one after the other, then decodes every event.
fn decode_pieces<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<Chunk> {
    let mut parser = SseParser::new();
    let mut decoder = AnthropicDecoder::new();
    let mut events = Vec::new();
    let mut chunks = Vec::new();
    for piece in pieces {
        parser.push(piece, &mut events).unwrap();
        for ev in events.drain(..) {
            decoder.decode(&ev, &mut chunks).unwrap();
        }
    }
    parser.finish(&mut events);
    for ev in &events {
        decoder.decode(ev, &mut chunks).unwrap();
    }
    chunks
}

/// The chunks of a recorded body after its model, which must come first.
fn decode_body(body: &[u8]) -> Vec<Chunk> {
    let mut chunks = decode_pieces([body]);
    assert!(matches!(chunks.remove(0), Chunk::Model(m) if m.starts_with("claude-")));
    chunks
}

fn ev(event: Option<&str>, data: &str) -> SseEvent {
    SseEvent {
        event: event.map(str::to_string),
        data: data.to_string(),
        id: None,
    }
}

fn decode_one(event: Option<&str>, data: &str) -> Result<Vec<Chunk>, ProviderError> {
    let mut out = Vec::new();
    AnthropicDecoder::new()
        .decode(&ev(event, data), &mut out)
        .map(|()| out)
}

fn text_of(chunks: &[Chunk]) -> String {
    chunks
        .iter()
        .filter_map(|c| match c {
            Chunk::Delta(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

/// Everything that is not a text delta, in order.
fn tail_of(chunks: &[Chunk]) -> Vec<Chunk> {
    chunks
        .iter()
        .filter(|c| !matches!(c, Chunk::Delta(_)))
        .cloned()
        .collect()
}

fn usage(prompt_tokens: i128, completion_tokens: i128) -> Chunk {
    Chunk::Usage(Usage {
        prompt_tokens,
        completion_tokens,
        ..Usage::default()
    })
}

fn tool(index: u32, id: Option<&str>, name: Option<&str>, arguments: &str) -> Chunk {
    Chunk::ToolCallDelta {
        index,
        id: id.map(str::to_string),
        name: name.map(str::to_string),
        arguments: arguments.to_string(),
    }
}

#[test]
fn recorded_text() {
    let body = read("text");
    assert!(
        !body.ends_with(b"\n"),
        "fixture premise: no final blank line"
    );
    let chunks = decode_body(&body);
    assert_eq!(
        chunks,
        [
            Chunk::Delta("Hello".into()),
            Chunk::Delta(" there".into()),
            Chunk::Delta("!".into()),
            Chunk::Finish(FinishReason::Stop),
            // Output tokens are cumulative: 6, not 1 + 6.
            usage(11, 6),
            Chunk::End,
        ]
    );
    assert_eq!(text_of(&chunks), "Hello there!");
}

#[test]
fn recorded_tool_use() {
    let chunks = decode_body(&read("tool_use"));
    assert_eq!(
        text_of(&chunks),
        "I'll check the current weather in Paris for you."
    );
    let id = "toolu_01NRLabsLyVHZPKxbKvkfSMn";
    assert_eq!(
        tail_of(&chunks),
        [
            // The tool_use block is content block 1 (after the text block).
            tool(1, Some(id), Some("get_weather"), ""),
            tool(1, None, None, ""),
            tool(1, None, None, "{\"locati"),
            tool(1, None, None, "on\": \"P"),
            tool(1, None, None, "ar"),
            tool(1, None, None, "is\"}"),
            // Its block's stop: the call is whole.
            Chunk::ToolCallEnd(1),
            Chunk::Finish(FinishReason::ToolCalls),
            usage(377, 65),
            Chunk::End,
        ]
    );
    let args: String = chunks
        .iter()
        .filter_map(|c| match c {
            Chunk::ToolCallDelta { arguments, .. } => Some(arguments.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(args, r#"{"location": "Paris"}"#);
}

#[test]
fn only_the_stop_of_a_tool_block_ends_a_call() {
    let mut d = AnthropicDecoder::new();
    let mut out = Vec::new();
    let stop = |i: u32| format!(r#"{{"type":"content_block_stop","index":{i}}}"#);
    let start =
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#;
    d.decode(&ev(Some("content_block_start"), start), &mut out)
        .unwrap();
    d.decode(&ev(Some("content_block_stop"), &stop(0)), &mut out)
        .unwrap();
    assert_eq!(out, []);
    let start = r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#;
    d.decode(&ev(Some("content_block_start"), start), &mut out)
        .unwrap();
    out.clear();
    // A stop of another block, or one that does not parse, says nothing.
    d.decode(&ev(Some("content_block_stop"), &stop(0)), &mut out)
        .unwrap();
    d.decode(&ev(Some("content_block_stop"), "{not json"), &mut out)
        .unwrap();
    assert_eq!(out, []);
    d.decode(&ev(Some("content_block_stop"), &stop(1)), &mut out)
        .unwrap();
    assert_eq!(out, [Chunk::ToolCallEnd(1)]);
    // Once.
    d.decode(&ev(Some("content_block_stop"), &stop(1)), &mut out)
        .unwrap();
    assert_eq!(out, [Chunk::ToolCallEnd(1)]);
}

#[test]
fn stop_reasons_map_to_finish_reasons() {
    for (stop, expected) in [
        ("end_turn", FinishReason::Stop),
        ("stop_sequence", FinishReason::StopSequence(None)),
        ("max_tokens", FinishReason::Length),
        ("model_context_window_exceeded", FinishReason::Length),
        ("tool_use", FinishReason::ToolCalls),
        ("refusal", FinishReason::ContentFilter),
        ("pause_turn", FinishReason::Other("pause_turn".into())),
    ] {
        let data = format!(r#"{{"type":"message_delta","delta":{{"stop_reason":"{stop}"}}}}"#);
        assert_eq!(
            decode_one(Some("message_delta"), &data).unwrap(),
            [Chunk::Finish(expected)],
            "{stop}"
        );
    }
    // The sequence that matched, when Anthropic names it; `stop` to the
    // other APIs.
    let data = r#"{"type":"message_delta","delta":{"stop_reason":"stop_sequence","stop_sequence":"\nEND"}}"#;
    let out = decode_one(Some("message_delta"), data).unwrap();
    let matched = FinishReason::StopSequence(Some("\nEND".into()));
    assert_eq!(out, [Chunk::Finish(matched.clone())]);
    assert_eq!(matched.as_str(), "stop");
    // A stop sequence on another stop reason is not a match.
    let data =
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null}}"#;
    assert_eq!(
        decode_one(Some("message_delta"), data).unwrap(),
        [Chunk::Finish(FinishReason::Stop)]
    );
    // No stop reason yet, no usage: nothing.
    let data = r#"{"type":"message_delta","delta":{"stop_reason":null}}"#;
    assert_eq!(decode_one(Some("message_delta"), data).unwrap(), []);
}

#[test]
fn usage_adds_cache_tokens_and_takes_the_latest_counts() {
    let mut d = AnthropicDecoder::new();
    let mut out = Vec::new();
    let start = r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_creation_input_tokens":100,"cache_read_input_tokens":null,"output_tokens":1}}}"#;
    d.decode(&ev(Some("message_start"), start), &mut out)
        .unwrap();
    assert_eq!(out, []);
    let delta = r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}"#;
    d.decode(&ev(Some("message_delta"), delta), &mut out)
        .unwrap();
    let cached = |prompt_tokens, completion_tokens, cache_read_tokens| {
        Chunk::Usage(Usage {
            prompt_tokens,
            completion_tokens,
            cache_read_tokens,
            cache_write_tokens: 100,
            cache_write_1h_tokens: None,
        })
    };
    assert_eq!(out, [Chunk::Finish(FinishReason::Stop), cached(110, 5, 0)]);
    // Newer streams repeat (cumulative) input counts in message_delta.
    out.clear();
    let delta = r#"{"type":"message_delta","delta":{},"usage":{"input_tokens":12,"cache_read_input_tokens":3,"output_tokens":9}}"#;
    d.decode(&ev(Some("message_delta"), delta), &mut out)
        .unwrap();
    assert_eq!(out, [cached(115, 9, 3)]);
}

#[test]
fn cache_writes_split_by_lifetime_are_kept() {
    let usage = |prompt, write, write_1h| {
        Chunk::Usage(Usage {
            prompt_tokens: prompt,
            completion_tokens: 5,
            cache_read_tokens: 0,
            cache_write_tokens: write,
            cache_write_1h_tokens: write_1h,
        })
    };
    let run = |start: &str, delta: &str| {
        let mut d = AnthropicDecoder::new();
        let mut out = Vec::new();
        d.decode(&ev(Some("message_start"), start), &mut out)
            .unwrap();
        d.decode(&ev(Some("message_delta"), delta), &mut out)
            .unwrap();
        out
    };
    let delta = r#"{"type":"message_delta","delta":{},"usage":{"output_tokens":5}}"#;
    // Anthropic's shape: the total, and its split.
    let start = r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_creation_input_tokens":100,"cache_creation":{"ephemeral_5m_input_tokens":40,"ephemeral_1h_input_tokens":60},"output_tokens":1}}}"#;
    assert_eq!(run(start, delta), [usage(110, 100, Some(60))]);
    // The split alone: the total is its sum.
    let start = r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":30},"output_tokens":1}}}"#;
    assert_eq!(run(start, delta), [usage(40, 30, Some(30))]);
    // An empty split says nothing.
    let start = r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_creation_input_tokens":7,"cache_creation":{},"output_tokens":1}}}"#;
    assert_eq!(run(start, delta), [usage(17, 7, None)]);
    // A later split replaces an earlier one.
    let start = r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_creation_input_tokens":100,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":0},"output_tokens":1}}}"#;
    let later = r#"{"type":"message_delta","delta":{},"usage":{"output_tokens":5,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":100}}}"#;
    assert_eq!(run(start, later), [usage(110, 100, Some(100))]);
}

#[test]
fn usage_without_both_counts_is_not_reported() {
    // No output count in message_delta: message_start's 1 is not the answer.
    let mut d = AnthropicDecoder::new();
    let mut out = Vec::new();
    let start =
        r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"output_tokens":1}}}"#;
    d.decode(&ev(Some("message_start"), start), &mut out)
        .unwrap();
    let delta = r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{}}"#;
    d.decode(&ev(Some("message_delta"), delta), &mut out)
        .unwrap();
    assert_eq!(out, [Chunk::Finish(FinishReason::Stop)]);
    // No input count anywhere: the prompt side is unknown.
    let delta = r#"{"type":"message_delta","delta":{},"usage":{"output_tokens":4}}"#;
    assert_eq!(decode_one(Some("message_delta"), delta).unwrap(), []);
}

#[test]
fn in_stream_error_event() {
    let data = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let overloaded = |r: Result<Vec<Chunk>, ProviderError>| match r {
        Err(ProviderError::InStream { message, kind }) => {
            assert_eq!(message, "overloaded_error: Overloaded");
            assert_eq!(kind, Some(ErrorKind::Overloaded));
        }
        other => panic!("{other:?}"),
    };
    overloaded(decode_one(Some("error"), data));
    // Without an event name, the data's type says it is an error.
    overloaded(decode_one(None, data));
    // Partial or unparseable error events are still errors, bounded.
    let only_type = r#"{"type":"error","error":{"type":"api_error"}}"#;
    assert!(matches!(
        decode_one(Some("error"), only_type),
        Err(ProviderError::InStream { message, kind: Some(ErrorKind::Api) }) if message == "api_error"
    ));
    // A type Anthropic does not document is text, not a kind.
    let odd = r#"{"type":"error","error":{"type":"weird_error","message":"m"}}"#;
    assert!(matches!(
        decode_one(Some("error"), odd),
        Err(ProviderError::InStream { message, kind: None }) if message == "weird_error: m"
    ));
    let long = format!("not json {}", "x\n".repeat(500));
    match decode_one(Some("error"), &long) {
        Err(ProviderError::InStream { message: m, kind }) => {
            assert!(m.chars().count() <= SUMMARY_MAX && !m.contains('\n'), "{m}");
            assert!(m.starts_with("not json x x"), "{m}");
            assert_eq!(kind, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_and_uninteresting_events_are_ignored() {
    for (name, data) in [
        (Some("ping"), r#"{"type": "ping"}"#),
        (
            Some("content_block_stop"),
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        (Some("future_event"), r#"{"type":"future_event","x":[1,2]}"#),
        // Unknown events are not even parsed.
        (Some("future_event"), "not json at all"),
        (None, r#"{"type":"future_event"}"#),
        (None, r#"{"no_type":true}"#),
        (
            Some("content_block_start"),
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
        ),
        (
            Some("content_block_delta"),
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":""}}"#,
        ),
        (
            Some("content_block_delta"),
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":""}}"#,
        ),
        (
            Some("content_block_delta"),
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""}}"#,
        ),
        (
            Some("content_block_start"),
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
    ] {
        assert_eq!(decode_one(name, data).unwrap(), [], "{name:?} {data}");
    }
}

#[test]
fn thinking_is_decoded_as_reasoning() {
    let data = r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me check."}}"#;
    assert_eq!(
        decode_one(Some("content_block_delta"), data).unwrap(),
        [Chunk::Reasoning("Let me check.".into())]
    );
}

#[test]
fn signatures_and_redacted_thinking_are_decoded_for_the_client() {
    let data = r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCg"}}"#;
    assert_eq!(
        decode_one(Some("content_block_delta"), data).unwrap(),
        [Chunk::ReasoningSignature("EqQBCg".into())]
    );
    let data = r#"{"type":"content_block_start","index":1,"content_block":{"type":"redacted_thinking","data":"EmwKAhgB"}}"#;
    assert_eq!(
        decode_one(Some("content_block_start"), data).unwrap(),
        [Chunk::RedactedReasoning("EmwKAhgB".into())]
    );
}

#[test]
fn escaped_and_multibyte_text_is_decoded() {
    let data = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"caf\u00e9 \"q\"\n😀"}}"#;
    assert_eq!(
        decode_one(Some("content_block_delta"), data).unwrap(),
        [Chunk::Delta("café \"q\"\n😀".into())]
    );
    // Escapes in tag strings too (a borrowed &str would fail here).
    let data =
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text\u005fdelta","text":"x"}}"#;
    assert_eq!(
        decode_one(Some("content_block_delta"), data).unwrap(),
        [Chunk::Delta("x".into())]
    );
}

#[test]
fn malformed_data_is_an_error_with_a_short_quote() {
    let long_garbage = format!("{{\"type\":\"content_block_delta\",{}", "z".repeat(500));
    for (name, data) in [
        (Some("content_block_delta"), "{not json"),
        (Some("content_block_delta"), long_garbage.as_str()),
        (Some("message_start"), "[1,2]"),
        (Some("message_delta"), r#"{"delta":{"stop_reason":5}}"#),
        (
            Some("content_block_delta"),
            r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}"#,
        ),
        (
            Some("content_block_start"),
            r#"{"index":-1,"content_block":{"type":"text"}}"#,
        ),
        (
            Some("message_start"),
            r#"{"message":{"usage":{"input_tokens":"many"}}}"#,
        ),
        (None, "{not json"),
        (None, "[DONE]"),
    ] {
        match decode_one(name, data) {
            Err(ProviderError::Malformed(m)) => {
                let quoted = m.rsplit_once(": ").map_or(m.as_str(), |(_, q)| q);
                assert!(quoted.chars().count() <= SNIPPET_MAX, "{m}");
                assert!(!m.contains('\n'), "{m}");
            }
            other => panic!("{name:?} {data}: {other:?}"),
        }
    }
}

#[test]
fn nothing_is_appended_on_error() {
    let mut out = vec![Chunk::End];
    let err = AnthropicDecoder::new().decode(&ev(Some("message_delta"), "{oops"), &mut out);
    assert!(err.is_err());
    assert_eq!(out, [Chunk::End]);
}

fn request(messages: Vec<Message>, temperature: Option<f64>) -> ProviderRequest {
    ProviderRequest {
        model: "claude-sonnet-4-20250514".into(),
        messages,
        params: std::sync::Arc::new(crate::provider::Params {
            temperature,
            ..Default::default()
        }),
        max_tokens: 300,
        connect_timeout: Duration::from_secs(1),
        tools: Default::default(),
        trace_headers: Vec::new(),
    }
}

fn msg(role: Role, content: &str) -> Message {
    Message::new(role, content)
}

#[test]
fn request_body_has_top_level_system_and_max_tokens() {
    let req = request(
        vec![
            msg(Role::System, "Be brief."),
            msg(Role::User, "hi"),
            msg(Role::System, "Answer in French."),
            msg(Role::Assistant, "salut"),
            msg(Role::User, "ça va?"),
        ],
        Some(0.5),
    );
    assert_eq!(
        request_body(&req),
        json!({
            "model": "claude-sonnet-4-20250514",
            "max_tokens": 300,
            "system": "Be brief.\n\nAnswer in French.",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "salut"},
                {"role": "user", "content": "ça va?"},
            ],
            "temperature": 0.5,
            "stream": true,
        })
    );
    // No system message, no temperature: neither key.
    let body = request_body(&request(vec![msg(Role::User, "hi")], None));
    let obj = body.as_object().unwrap();
    assert!(!obj.contains_key("system") && !obj.contains_key("temperature"));
    assert_eq!(body["max_tokens"], 300);
}

#[test]
fn error_bodies_are_summarized() {
    let body = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#;
    assert_eq!(
        summarize_error_body(529, body),
        "overloaded_error: Overloaded"
    );
    let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit.\nSee docs."}}"#;
    assert_eq!(
        summarize_error_body(429, body),
        "rate_limit_error: Number of request tokens has exceeded your per-minute rate limit. See docs."
    );
    assert_eq!(
        summarize_error_body(500, b""),
        "empty error body (HTTP 500)"
    );
    let long = format!(
        r#"{{"type":"error","error":{{"type":"invalid_request_error","message":"{}"}}}}"#,
        "m".repeat(1000)
    );
    let s = summarize_error_body(400, long.as_bytes());
    assert!(s.starts_with("invalid_request_error: mmm") && s.chars().count() <= 200);
}

#[test]
fn one_line_limits() {
    assert_eq!(one_line("  a \n\t b  ", 10), "a b");
    assert_eq!(one_line("abcdef", 6), "abcdef");
    assert_eq!(one_line("abcdefg", 6), "abc...");
    assert_eq!(one_line("ab  cdefg", 6), "ab...");
    assert_eq!(one_line("ééééééé", 6), "ééé...");
    assert_eq!(one_line("", 6), "");
}

/// Cut positions as (start, run): a run of consecutive cuts makes 1-byte
/// pieces, which uniform positions would almost never produce.
fn cut_strategy() -> impl Strategy<Value = Vec<(Index, usize)>> {
    proptest::collection::vec((any::<Index>(), 0usize..6), 0..48)
}

fn split_at<'a>(body: &'a [u8], cuts: &[(Index, usize)]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts
        .iter()
        .flat_map(|(i, run)| {
            let start = i.index(body.len() + 1);
            start..=(start + run).min(body.len())
        })
        .collect();
    at.sort_unstable();
    at.dedup();
    let mut pieces = Vec::new();
    let mut start = 0;
    for cut in at {
        pieces.push(&body[start..cut]);
        start = cut;
    }
    pieces.push(&body[start..]);
    pieces
}

proptest! {
    #[test]
    fn recordings_split_anywhere_decode_the_same(
        tool_use in any::<bool>(),
        crlf in any::<bool>(),
        cuts in cut_strategy(),
    ) {
        let raw = read(if tool_use { "tool_use" } else { "text" });
        let whole = decode_pieces([&raw[..]]);
        let body: Vec<u8> = if crlf {
            raw.iter()
                .flat_map(|b| if *b == b'\n' { &b"\r\n"[..] } else { std::slice::from_ref(b) })
                .copied()
                .collect()
        } else {
            raw
        };
        prop_assert_eq!(decode_pieces(split_at(&body, &cuts)), whole);
    }

    #[test]
    fn decode_never_panics(name in proptest::option::of("[a-z_]{0,20}"), data in any::<String>()) {
        let _ = decode_one(name.as_deref(), &data);
    }

    #[test]
    fn decode_never_panics_on_near_miss_json(
        name in prop::sample::select(vec![
            "message_start", "content_block_start", "content_block_delta",
            "message_delta", "message_stop", "error",
        ]),
        index in any::<i64>(),
        kind in "(text|tool_use|text_delta|input_json_delta|x)",
        text in proptest::option::of(any::<String>()),
        tokens in proptest::option::of(any::<i64>()),
    ) {
        let v = json!({
            "type": name,
            "index": index,
            "content_block": {"type": kind, "text": text, "id": text, "name": text},
            "delta": {"type": kind, "text": text, "partial_json": text, "stop_reason": text},
            "message": {"usage": {"input_tokens": tokens, "output_tokens": tokens}},
            "usage": {"output_tokens": tokens, "cache_read_input_tokens": tokens},
            "error": {"type": text, "message": text},
        });
        if let Ok(chunks) = decode_one(Some(name), &v.to_string()) {
            prop_assert!(chunks.iter().all(|c| !matches!(c, Chunk::Delta(t) if t.is_empty())));
        }
    }

    #[test]
    fn one_line_is_bounded(s in any::<String>(), max in 3usize..120) {
        let out = one_line(&s, max);
        prop_assert!(out.chars().count() <= max);
        prop_assert!(!out.chars().any(|c| c.is_control() || c == '\n'));
    }
}
