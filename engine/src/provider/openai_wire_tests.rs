//! Tests of `openai_wire.rs`.
use std::time::Duration;

use proptest::prelude::*;

use super::super::sse::SseParser;
use super::super::{Message, Role};
use super::*;

fn read(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../fixtures/recorded/openai/{name}.sse",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).expect(&path)
}

/// The chunks of a recorded body after its model, which must come first.
fn decode_body(body: &[u8]) -> Vec<Chunk> {
    let mut chunks = decode_all(body);
    assert_eq!(chunks.remove(0), Chunk::Model("gpt-4o-2024-08-06".into()));
    assert!(!chunks.iter().any(|c| matches!(c, Chunk::Model(_))));
    chunks
}

fn decode_all(body: &[u8]) -> Vec<Chunk> {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    parser.push(body, &mut events).unwrap();
    parser.finish(&mut events);
    let mut decoder = OpenAiDecoder::new();
    let mut chunks = Vec::new();
    for ev in &events {
        decoder.decode(ev, &mut chunks).unwrap();
    }
    chunks
}

fn event(data: &str) -> SseEvent {
    SseEvent {
        event: None,
        data: data.to_string(),
        id: None,
    }
}

fn decode_one(data: &str) -> Result<Vec<Chunk>, ProviderError> {
    let mut out = Vec::new();
    OpenAiDecoder::new()
        .decode(&event(data), &mut out)
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

#[test]
fn recorded_text_stop() {
    let chunks = decode_body(&read("text_stop"));
    assert_eq!(
        text_of(&chunks),
        "I'm unable to provide real-time weather updates. To get the current weather in San Francisco, I recommend checking a reliable weather website or a weather app."
    );
    assert!(chunks.iter().all(|c| match c {
        Chunk::Delta(t) => !t.is_empty(),
        _ => true,
    }));
    assert_eq!(
        tail_of(&chunks),
        vec![Chunk::Finish(FinishReason::Stop), usage(14, 30), Chunk::End]
    );
    // The role-only first chunk and its empty content produce nothing.
    assert_eq!(chunks[0], Chunk::Delta("I'm".into()));
}

#[test]
fn recorded_tool_call() {
    let chunks = decode_body(&read("tool_call"));
    assert_eq!(text_of(&chunks), "");
    let calls: Vec<_> = chunks
        .iter()
        .filter_map(|c| match c {
            Chunk::ToolCallDelta {
                index,
                id,
                name,
                arguments,
            } => Some((*index, id.clone(), name.clone(), arguments.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(calls.len(), 8);
    assert!(calls.iter().all(|c| c.0 == 0));
    assert_eq!(
        calls[0],
        (
            0,
            Some("call_4XzlGBLtUe9dy3GVNV4jhq7h".into()),
            Some("get_weather".into()),
            String::new()
        )
    );
    assert!(calls[1..].iter().all(|c| c.1.is_none() && c.2.is_none()));
    let arguments: String = calls.iter().map(|c| c.3.as_str()).collect();
    assert_eq!(arguments, r#"{"city":"New York City"}"#);
    assert_eq!(
        chunks[calls.len()..],
        [
            Chunk::Finish(FinishReason::ToolCalls),
            usage(44, 16),
            Chunk::End
        ]
    );
}

#[test]
fn recorded_length() {
    assert_eq!(
        decode_body(&read("length")),
        vec![
            Chunk::Delta("{\"".into()),
            Chunk::Finish(FinishReason::Length),
            usage(79, 1),
            Chunk::End,
        ]
    );
}

#[test]
fn done_marker() {
    assert_eq!(decode_one("[DONE]").unwrap(), vec![Chunk::End]);
    assert_eq!(decode_one(" [DONE] ").unwrap(), vec![Chunk::End]);
}

#[test]
fn empty_null_and_role_only_deltas_produce_nothing() {
    for data in [
        r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":null}}]}"#,
        r#"{"choices":[{"index":0,"delta":{}}]}"#,
        r#"{"choices":[{"index":0}]}"#,
        r#"{"choices":[],"usage":null}"#,
        r#"{"choices":[],"usage":null,"error":null,"object":"chat.completion.chunk"}"#,
    ] {
        assert_eq!(decode_one(data).unwrap(), vec![], "{data}");
    }
}

#[test]
fn finish_comes_after_delta_in_the_same_chunk() {
    let data =
        r#"{"choices":[{"index":0,"delta":{"content":"bye"},"finish_reason":"content_filter"}]}"#;
    assert_eq!(
        decode_one(data).unwrap(),
        vec![
            Chunk::Delta("bye".into()),
            Chunk::Finish(FinishReason::ContentFilter)
        ]
    );
    let data = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"eos"}]}"#;
    assert_eq!(
        decode_one(data).unwrap(),
        vec![Chunk::Finish(FinishReason::Other("eos".into()))]
    );
}

#[test]
fn choices_and_usage_in_one_chunk() {
    let data = r#"{"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
    assert_eq!(
        decode_one(data).unwrap(),
        vec![
            Chunk::Delta("x".into()),
            Chunk::Finish(FinishReason::Stop),
            usage(3, 1)
        ]
    );
}

#[test]
fn parallel_tool_calls_in_one_chunk() {
    let data = r#"{"choices":[{"index":0,"delta":{"tool_calls":[
        {"index":0,"id":"call_a","type":"function","function":{"name":"f","arguments":"{\"a\":"}},
        {"index":1,"id":"call_b","type":"function","function":{"name":"g"}},
        {"index":2,"function":{"arguments":"1}"}}
    ]}}]}"#;
    assert_eq!(
        decode_one(data).unwrap(),
        vec![
            Chunk::ToolCallDelta {
                index: 0,
                id: Some("call_a".into()),
                name: Some("f".into()),
                arguments: "{\"a\":".into()
            },
            Chunk::ToolCallDelta {
                index: 1,
                id: Some("call_b".into()),
                name: Some("g".into()),
                arguments: String::new()
            },
            Chunk::ToolCallDelta {
                index: 2,
                id: None,
                name: None,
                arguments: "1}".into()
            },
        ]
    );
}

#[test]
fn other_choice_indices_are_ignored() {
    let data = r#"{"choices":[{"index":1,"delta":{"content":"no"},"finish_reason":"stop"},{"index":0,"delta":{"content":"yes"}}]}"#;
    assert_eq!(decode_one(data).unwrap(), vec![Chunk::Delta("yes".into())]);
}

#[test]
fn refusals_and_reasoning_are_decoded_apart_from_text() {
    let data = r#"{"choices":[{"index":0,"delta":{"refusal":"I can't help with that."}}]}"#;
    assert_eq!(
        decode_one(data).unwrap(),
        [Chunk::Refusal("I can't help with that.".into())]
    );
    for field in ["reasoning_content", "reasoning"] {
        let data = format!(
            r#"{{"choices":[{{"index":0,"delta":{{"{field}":"Think.","content":"Hi"}}}}]}}"#
        );
        assert_eq!(
            decode_one(&data).unwrap(),
            [Chunk::Reasoning("Think.".into()), Chunk::Delta("Hi".into())],
            "{field}"
        );
    }
    let data = r#"{"choices":[{"index":0,"delta":{"refusal":null,"reasoning_content":""}}]}"#;
    assert_eq!(decode_one(data).unwrap(), []);
}

#[test]
fn escaped_and_multibyte_text_is_decoded() {
    let data = r#"{"choices":[{"index":0,"delta":{"content":"caf\u00e9 \"q\"\n\ud83d\ude00 ü"}}]}"#;
    assert_eq!(
        decode_one(data).unwrap(),
        vec![Chunk::Delta("café \"q\"\n😀 ü".into())]
    );
}

#[test]
fn error_object_in_stream() {
    let data = r#"{"error": {"message": "The server had an error while processing your request.", "type": "server_error", "code": null}}"#;
    let Err(ProviderError::InStream { message: msg, .. }) = decode_one(data) else {
        panic!("expected InStream");
    };
    assert_eq!(
        msg,
        "server_error: The server had an error while processing your request."
    );

    let Err(ProviderError::InStream { message: msg, .. }) = decode_one(r#"{"error":"overloaded"}"#)
    else {
        panic!("expected InStream");
    };
    assert_eq!(msg, "overloaded");

    let long = "x".repeat(5000);
    let data = format!(r#"{{"error":{{"message":"{long}\nmore","type":"t"}}}}"#);
    let Err(ProviderError::InStream { message: msg, .. }) = decode_one(&data) else {
        panic!("expected InStream");
    };
    assert_eq!(msg.chars().count(), 200);
    assert!(msg.starts_with("t: xxx") && msg.ends_with("..."));

    let Err(ProviderError::InStream { message: msg, .. }) =
        decode_one(r#"{"error":{"code":"rate_limit"}}"#)
    else {
        panic!("expected InStream");
    };
    assert_eq!(msg, "rate_limit");

    // A number serde_json cannot hold still leaves an error an error.
    let Err(ProviderError::InStream { message: msg, .. }) =
        decode_one(r#"{"error":{"message":"boom","retry_after":1e400}}"#)
    else {
        panic!("expected InStream");
    };
    assert_eq!(
        msg,
        r#"unrecognized error {"message":"boom","retry_after":1e400}"#
    );
}

#[test]
fn unreadable_logprobs_cost_only_the_logprobs() {
    let data = r#"{"choices":[{"index":0,"delta":{"content":"hi"},"logprobs":{"content":[{"token":"hi","logprob":-1e400}]}}]}"#;
    assert_eq!(decode_one(data).unwrap(), vec![Chunk::Delta("hi".into())]);
    let data = r#"{"choices":[{"index":0,"delta":{"content":"hi"},"logprobs":{"content":[{"token":"hi","logprob":-0.5}]}}]}"#;
    let chunks = decode_one(data).unwrap();
    assert!(matches!(&chunks[0], Chunk::Logprobs(v) if v["content"][0]["logprob"] == -0.5));
}

#[test]
fn garbage_is_malformed_with_a_short_quote() {
    for data in [
        "not json",
        "",
        "{",
        "{\"choices\": [",
        "[1,2]",
        "[[]]",
        "42",
        "\"str\"",
        "null",
        "{}",
        r#"{"object":"chat.completion.chunk"}"#,
        r#"{"choices":"nope"}"#,
        r#"{"choices":[{"index":-1}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":5}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":{}}}]}"#,
        r#"{"choices":[],"usage":{"total_tokens":3}}"#,
        r#"{"choices":[],"usage":{"prompt_tokens":"3","completion_tokens":1}}"#,
    ] {
        match decode_one(data) {
            Err(ProviderError::Malformed(msg)) => {
                assert!(msg.len() < 250, "{data}: {msg}");
            }
            other => panic!("{data}: expected Malformed, got {other:?}"),
        }
    }

    let long = format!("{{\"choices\": [{}", "y".repeat(10_000));
    let Err(ProviderError::Malformed(msg)) = decode_one(&long) else {
        panic!("expected Malformed");
    };
    assert!(msg.contains("{\"choices\": [yyy"), "{msg}");
    assert!(msg.matches('y').count() <= SNIPPET_MAX, "{msg}");

    // Values echoed by serde's own message are bounded too.
    let data = format!(r#"{{"choices":[{{"index":"{}"}}]}}"#, "z".repeat(10_000));
    let Err(ProviderError::Malformed(msg)) = decode_one(&data) else {
        panic!("expected Malformed");
    };
    assert!(msg.matches('z').count() <= 2 * SNIPPET_MAX, "{msg}");
}

#[test]
fn nothing_is_appended_on_error() {
    let mut out = vec![Chunk::End];
    let mut decoder = OpenAiDecoder::new();
    let bad = r#"{"choices":[{"index":0,"delta":{"content":"x"}}],"usage":{"prompt_tokens":1}}"#;
    assert!(decoder.decode(&event(bad), &mut out).is_err());
    assert_eq!(out, vec![Chunk::End]);
}

#[test]
fn request_body_streaming() {
    let req = ProviderRequest {
        model: "gpt-4o".into(),
        messages: vec![
            Message::new(Role::System, "be brief"),
            Message::new(Role::User, "hi"),
            Message::new(Role::Assistant, "hello"),
        ],
        params: std::sync::Arc::new(crate::provider::Params {
            temperature: Some(0.5),
            ..Default::default()
        }),
        max_tokens: 256,
        connect_timeout: Duration::from_secs(5),
        tools: Default::default(),
        trace_headers: Vec::new(),
    };
    assert_eq!(
        request_body(&req, true),
        json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ],
            "max_tokens": 256,
            "temperature": 0.5,
            "stream": true,
            "stream_options": {"include_usage": true},
        })
    );

    let req = ProviderRequest {
        params: Default::default(),
        ..req
    };
    let body = request_body(&req, false);
    assert_eq!(body["stream"], json!(false));
    assert!(body.get("temperature").is_none());
    assert!(body.get("stream_options").is_none());
}

#[test]
fn error_body_openai_shape() {
    let body = br#"{
"error": {
    "message": "Incorrect API key provided: sk-abc***def. You can find your API key at https://platform.openai.com/account/api-keys.",
    "type": "invalid_request_error",
    "param": null,
    "code": "invalid_api_key"
}
}"#;
    assert_eq!(
        summarize_error_body(401, body),
        "invalid_request_error: Incorrect API key provided: sk-abc***def. You can find your API key at https://platform.openai.com/account/api-keys."
    );
    assert_eq!(
        summarize_error_body(429, br#"{"error":{"message":"Rate limit reached","type":null,"code":"rate_limit_exceeded"}}"#),
        "rate_limit_exceeded: Rate limit reached"
    );
    assert_eq!(
        summarize_error_body(400, br#"{"error":"bad model"}"#),
        "bad model"
    );
    assert_eq!(
        summarize_error_body(422, br#"{"detail":"Not Found"}"#),
        "Not Found"
    );
    assert_eq!(
        summarize_error_body(500, br#"{"message":"internal"}"#),
        "internal"
    );
}

#[test]
fn error_body_other_shapes() {
    assert_eq!(
        summarize_error_body(503, b""),
        "empty error body (HTTP 503)"
    );
    assert_eq!(
        summarize_error_body(503, b" \r\n"),
        "empty error body (HTTP 503)"
    );
    assert_eq!(
        summarize_error_body(502, b"upstream connect error\nor disconnect"),
        "upstream connect error or disconnect"
    );
    assert_eq!(
        summarize_error_body(
            502,
            b"<html>\r\n<head><TITLE>502 Bad Gateway</TITLE></head>\r\n<body>...</body></html>"
        ),
        "html error page: 502 Bad Gateway"
    );
    assert_eq!(
        summarize_error_body(500, b"<html><body>oops</body></html>"),
        "html error page (HTTP 500)"
    );
    // JSON that is not an error shape is quoted like text.
    assert_eq!(summarize_error_body(500, br#"{"a": 1}"#), r#"{"a": 1}"#);
    assert_eq!(
        summarize_error_body(500, b"\xFF\xFEbad"),
        "\u{FFFD}\u{FFFD}bad"
    );
}

#[test]
fn error_body_is_bounded() {
    let long = "word ".repeat(100_000);
    let medium = "word ".repeat(1000);
    for body in [
        long.clone(),
        format!(r#"{{"error":{{"message":"{long}","type":"server_error"}}}}"#),
        format!(r#"{{"error":{{"message":"{medium}","type":"server_error"}}}}"#),
        format!("<html><title>{long}</title></html>"),
        "é".repeat(1000),
        format!("a{}", "é".repeat(1000)),
        "😀".repeat(1000),
    ] {
        let s = summarize_error_body(500, body.as_bytes());
        assert!(s.chars().count() <= SUMMARY_MAX, "{s}");
        assert!(s.ends_with("..."), "{s}");
        assert!(!s.contains('\u{FFFD}'), "{s}");
        assert!(!s.contains('\n'));
    }
    // Exactly at the limit: not marked as cut.
    let exact = "a".repeat(SUMMARY_MAX);
    assert_eq!(summarize_error_body(500, exact.as_bytes()), exact);
}

#[test]
fn one_line_limits() {
    assert_eq!(one_line("  a \n\t b  ", 10, false), "a b");
    assert_eq!(one_line("abcdef", 5, false), "ab...");
    assert_eq!(one_line("abcde", 5, false), "abcde");
    assert_eq!(one_line("abc", 5, true), "ab...");
    assert_eq!(one_line("ab", 5, true), "ab...");
    assert_eq!(one_line("a b c d", 5, false), "a...");
    assert_eq!(one_line("abcde", 5, true), "ab...");
    assert_eq!(one_line("", 5, false), "");
}

proptest! {
    #[test]
    fn decode_never_panics(data in any::<String>()) {
        let _ = decode_one(&data);
    }

    #[test]
    fn decode_never_panics_on_near_miss_json(
        content in proptest::option::of(any::<String>()),
        index in any::<i64>(),
        reason in proptest::option::of("[a-z_]{0,12}"),
        usage in proptest::option::of((any::<u64>(), any::<i64>())),
    ) {
        let mut v = json!({"choices": [{"index": index, "delta": {"content": content}, "finish_reason": reason}]});
        if let Some((p, c)) = usage {
            v["usage"] = json!({"prompt_tokens": p, "completion_tokens": c});
        }
        let result = decode_one(&v.to_string());
        if let Ok(chunks) = result {
            prop_assert!(chunks.iter().all(|c| !matches!(c, Chunk::Delta(t) if t.is_empty())));
        }
    }

    #[test]
    fn error_summary_is_bounded(status in any::<u16>(), body in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let s = summarize_error_body(status, &body);
        prop_assert!(s.chars().count() <= SUMMARY_MAX);
        prop_assert!(!s.contains('\n') && !s.contains('\r'));
    }
}

fn decode_n(n: u32, lines: &[&str]) -> Vec<Chunk> {
    let mut decoder = OpenAiDecoder::with_choices(n);
    let mut out = Vec::new();
    for l in lines {
        decoder.decode(&event(l), &mut out).unwrap();
    }
    out
}

#[test]
fn interleaved_choices_are_told_apart_by_a_marker_when_they_switch() {
    let c = |i: u32, delta: &str, finish: &str| {
        format!(r#"{{"choices":[{{"index":{i},"delta":{delta},"finish_reason":{finish}}}]}}"#)
    };
    let lines = [
        c(0, r#"{"role":"assistant","content":""}"#, "null"),
        c(1, r#"{"role":"assistant","content":""}"#, "null"),
        c(0, r#"{"content":"Hel"}"#, "null"),
        c(0, r#"{"content":"lo"}"#, "null"),
        c(2, r#"{"content":"Hi"}"#, "null"),
        c(1, r#"{"content":"Hey"}"#, "null"),
        // Two choices in one chunk, one finishing.
        r#"{"choices":[{"index":2,"delta":{},"finish_reason":"stop"},{"index":0,"delta":{"content":"!"},"finish_reason":"stop"}]}"#.to_string(),
        c(1, r#"{"refusal":"No"}"#, r#""length""#),
        // Not one of the three asked for.
        c(3, r#"{"content":"stray"}"#, r#""stop""#),
        r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":7}}"#.to_string(),
        "[DONE]".to_string(),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_eq!(
        decode_n(3, &lines),
        [
            Chunk::Choice(1),
            Chunk::Choice(0),
            Chunk::Delta("Hel".into()),
            Chunk::Delta("lo".into()),
            Chunk::Choice(2),
            Chunk::Delta("Hi".into()),
            Chunk::Choice(1),
            Chunk::Delta("Hey".into()),
            Chunk::Choice(2),
            Chunk::Finish(FinishReason::Stop),
            Chunk::Choice(0),
            Chunk::Delta("!".into()),
            Chunk::Finish(FinishReason::Stop),
            Chunk::Choice(1),
            Chunk::Refusal("No".into()),
            Chunk::Finish(FinishReason::Length),
            usage(9, 7),
            Chunk::End,
        ]
    );
    // A one-choice decoder never names a choice, whatever comes.
    let one = decode_n(1, &lines);
    assert!(!one.iter().any(|c| matches!(c, Chunk::Choice(_))));
    assert_eq!(text_of(&one), "Hello!");
}

#[test]
fn recorded_logprobs_come_before_the_text_they_describe() {
    // A real stream of gpt-4o refusing, with logprobs: true.
    let chunks = decode_all(&read("refusal"));
    let mut refusal = String::new();
    let mut described = String::new();
    let mut waiting: Option<String> = None;
    for c in &chunks {
        match c {
            Chunk::Logprobs(lp) => {
                assert!(waiting.is_none(), "two logprobs for one piece: {chunks:?}");
                assert_eq!(lp["content"], Value::Null);
                let tokens: String = lp["refusal"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["token"].as_str().unwrap())
                    .collect();
                waiting = Some(tokens);
            }
            Chunk::Refusal(t) => {
                assert_eq!(waiting.take().as_deref(), Some(t.as_str()));
                described.push_str(t);
                refusal.push_str(t);
            }
            Chunk::Choice(_) => panic!("one choice names none"),
            _ => {}
        }
    }
    assert!(waiting.is_none());
    assert!(refusal.starts_with("I'm sorry,"), "{refusal}");
    assert_eq!(described, refusal);
    // The role chunk's `{"content": null, "refusal": []}` says nothing.
    let first = chunks.iter().position(|c| matches!(c, Chunk::Logprobs(_)));
    let first_refusal = chunks.iter().position(|c| matches!(c, Chunk::Refusal(_)));
    assert_eq!(first.map(|i| i + 1), first_refusal);
}

#[test]
fn request_body_sends_n_and_logprobs() {
    let req = ProviderRequest {
        model: "gpt-4o".into(),
        messages: vec![Message::new(Role::User, "hi")],
        params: std::sync::Arc::new(crate::provider::Params {
            n: Some(3),
            logprobs: true,
            top_logprobs: Some(2),
            ..Default::default()
        }),
        max_tokens: 16,
        connect_timeout: Duration::from_secs(5),
        tools: Default::default(),
        trace_headers: Vec::new(),
    };
    let body = request_body(&req, true);
    assert_eq!(body["n"], json!(3));
    assert_eq!(body["logprobs"], json!(true));
    assert_eq!(body["top_logprobs"], json!(2));
    let plain = ProviderRequest {
        params: Default::default(),
        ..req
    };
    let body = request_body(&plain, true);
    assert!(body.get("n").is_none() && body.get("logprobs").is_none());
}
