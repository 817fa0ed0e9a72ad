//! The OpenAI chat-completions wire format: request bodies, streamed
//! `chat.completion.chunk` events and HTTP error bodies.

use serde::Deserialize;
use serde_json::{Value, json};

use super::sse::SseEvent;
use super::{Chunk, FinishReason, ProviderError, ProviderRequest, Usage};

/// Longest error summary, in characters: these end up in logs and in client
/// errors, so a provider's body must never come through whole.
const SUMMARY_MAX: usize = 200;
/// Most characters of offending upstream data quoted in a `Malformed` error.
const SNIPPET_MAX: usize = 80;
/// Error bodies larger than this are not parsed as JSON, only quoted.
const ERROR_JSON_MAX: usize = 64 << 10;

pub fn request_body(req: &ProviderRequest, stream: bool) -> Value {
    let messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| json!({ "role": m.role, "content": m.content }))
        .collect();
    let mut body = json!({
        "model": req.model,
        "messages": messages,
        "max_tokens": req.max_tokens,
        "stream": stream,
    });
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if stream {
        // Without this OpenAI sends no usage at all in streaming mode.
        body["stream_options"] = json!({ "include_usage": true });
    }
    body
}

// Only the fields we use are declared: serde skips the rest (id, model,
// system_fingerprint, logprobs...) without allocating. Text fields are owned
// because they move straight into a `Chunk`.
#[derive(Deserialize)]
struct WireChunk {
    choices: Option<Vec<WireChoice>>,
    usage: Option<WireUsage>,
    // Free-form in practice (object or string, varying keys), and only ever
    // present once, on failure.
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WireChoice {
    index: Option<u32>,
    delta: Option<WireDelta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireDelta {
    content: Option<String>,
    tool_calls: Option<Vec<WireToolCall>>,
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
    prompt_tokens: u64,
    completion_tokens: u64,
}

#[derive(Debug, Default, Clone)]
pub struct OpenAiDecoder {
    _private: (),
}

impl OpenAiDecoder {
    pub fn new() -> Self {
        Self::default()
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
            return Err(ProviderError::InStream(error_summary(&err)));
        }
        if chunk.choices.is_none() && chunk.usage.is_none() {
            return Err(malformed("chunk has neither choices nor usage", data));
        }
        // n=1: other choice indices cannot occur in our requests, and are
        // ignored should a server send them anyway.
        for choice in chunk
            .choices
            .into_iter()
            .flatten()
            .filter(|c| c.index.unwrap_or(0) == 0)
        {
            if let Some(delta) = choice.delta {
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
            }));
        }
        Ok(())
    }
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
fn one_line(s: &str, max: usize, truncated: bool) -> String {
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
mod tests {
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

    fn decode_body(body: &[u8]) -> Vec<Chunk> {
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

    fn usage(prompt_tokens: u64, completion_tokens: u64) -> Chunk {
        Chunk::Usage(Usage {
            prompt_tokens,
            completion_tokens,
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
        let data = r#"{"choices":[{"index":0,"delta":{"content":"bye"},"finish_reason":"content_filter"}]}"#;
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
    fn escaped_and_multibyte_text_is_decoded() {
        let data =
            r#"{"choices":[{"index":0,"delta":{"content":"caf\u00e9 \"q\"\n\ud83d\ude00 ü"}}]}"#;
        assert_eq!(
            decode_one(data).unwrap(),
            vec![Chunk::Delta("café \"q\"\n😀 ü".into())]
        );
    }

    #[test]
    fn error_object_in_stream() {
        let data = r#"{"error": {"message": "The server had an error while processing your request.", "type": "server_error", "code": null}}"#;
        let Err(ProviderError::InStream(msg)) = decode_one(data) else {
            panic!("expected InStream");
        };
        assert_eq!(
            msg,
            "server_error: The server had an error while processing your request."
        );

        let Err(ProviderError::InStream(msg)) = decode_one(r#"{"error":"overloaded"}"#) else {
            panic!("expected InStream");
        };
        assert_eq!(msg, "overloaded");

        let long = "x".repeat(5000);
        let data = format!(r#"{{"error":{{"message":"{long}\nmore","type":"t"}}}}"#);
        let Err(ProviderError::InStream(msg)) = decode_one(&data) else {
            panic!("expected InStream");
        };
        assert_eq!(msg.chars().count(), 200);
        assert!(msg.starts_with("t: xxx") && msg.ends_with("..."));

        let Err(ProviderError::InStream(msg)) = decode_one(r#"{"error":{"code":"rate_limit"}}"#)
        else {
            panic!("expected InStream");
        };
        assert_eq!(msg, "rate_limit");
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
        let bad =
            r#"{"choices":[{"index":0,"delta":{"content":"x"}}],"usage":{"prompt_tokens":1}}"#;
        assert!(decoder.decode(&event(bad), &mut out).is_err());
        assert_eq!(out, vec![Chunk::End]);
    }

    #[test]
    fn request_body_streaming() {
        let req = ProviderRequest {
            model: "gpt-4o".into(),
            messages: vec![
                Message {
                    role: Role::System,
                    content: "be brief".into(),
                },
                Message {
                    role: Role::User,
                    content: "hi".into(),
                },
                Message {
                    role: Role::Assistant,
                    content: "hello".into(),
                },
            ],
            temperature: Some(0.5),
            max_tokens: 256,
            connect_timeout: Duration::from_secs(5),
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
            temperature: None,
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
}
