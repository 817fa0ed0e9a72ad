//! Replaying bodies: byte-exactness, event splitting and body-shaping faults.

mod common;

use common::{Client, T, events_of, fixture_bytes, json_events};
use serde_json::json;
use sluice_testkit::{Body, Fault, MockProvider, Reply, Script};

async fn stream_body(reply: Reply) -> (Vec<bytes::Bytes>, common::Head) {
    let mock = MockProvider::start(Script::single(reply)).await.unwrap();
    let mut c = Client::connect(mock.addr()).await;
    c.chat(true).await;
    let head = c.read_head().await.unwrap();
    let chunks = c.read_chunks().await.unwrap();
    (chunks, head)
}

#[tokio::test(start_paused = true)]
async fn text_stop_replays_byte_exact() {
    let mock = MockProvider::start(Script::single(Reply::fixture("openai/text_stop.sse")))
        .await
        .unwrap();
    let mut c = Client::connect(mock.addr()).await;
    c.chat(true).await;
    let head = c.read_head().await.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert_eq!(head.header("cache-control"), Some("no-cache"));
    let chunks = c.read_chunks().await.unwrap();
    let file = fixture_bytes("openai/text_stop.sse");
    assert_eq!(chunks.concat(), file);
    // One HTTP chunk per SSE event.
    assert_eq!(chunks.len(), events_of(&file).len());
    assert!(chunks.iter().all(|c| c.ends_with(b"\n\n")));

    let rec = mock.journal().wait_reply_done(0, T).await.unwrap();
    assert_eq!(rec.events_sent, chunks.len());
    assert_eq!(rec.bytes_sent, file.len());
    assert!(rec.completed_at.is_some());
    assert_eq!(rec.client_closed_at, None);
}

#[tokio::test(start_paused = true)]
async fn all_recordings_split_back_to_their_bytes() {
    for name in [
        "openai/text_stop.sse",
        "openai/tool_call.sse",
        "openai/length.sse",
    ] {
        let Body::Events(events) = Reply::fixture(name).body else {
            panic!()
        };
        assert_eq!(events.concat(), fixture_bytes(name), "{name}");
    }
}

#[tokio::test(start_paused = true)]
async fn anthropic_recording_without_trailing_blank_line_delivers_last_event() {
    let file = fixture_bytes("anthropic/text.sse");
    assert!(!file.ends_with(b"\n"), "fixture premise");
    let (chunks, _) = stream_body(Reply::fixture("anthropic/text.sse")).await;
    let body = chunks.concat();
    let mut expected = file.clone();
    expected.extend_from_slice(b"\n\n");
    assert_eq!(body, expected);
    let last = chunks.last().unwrap();
    assert_eq!(
        &last[..],
        b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
    );
    // The recorded `{"type": "ping"}` keeps its space.
    assert!(body.windows(16).any(|w| w == b"{\"type\": \"ping\"}"));
}

#[tokio::test(start_paused = true)]
async fn text_synthesizes_an_openai_stream() {
    let (chunks, _) = stream_body(Reply::text(&["Hello", ", ", "wörld"])).await;
    let body = chunks.concat();
    let evs = json_events(&body);
    assert_eq!(evs.len(), 6, "role, 3 words, finish, usage");
    assert_eq!(evs[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = evs[1..4]
        .iter()
        .map(|e| e["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello, wörld");
    assert!(evs.iter().all(|e| e["object"] == "chat.completion.chunk"));
    assert_eq!(evs[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(evs[5]["choices"], json!([]));
    assert_eq!(
        evs[5]["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13})
    );
    assert!(body.ends_with(b"data: [DONE]\n\n"));
}

#[tokio::test(start_paused = true)]
async fn truncate_removes_usage_and_done() {
    let (chunks, _) =
        stream_body(Reply::fixture("openai/text_stop.sse").fault(Fault::Truncate)).await;
    let body = chunks.concat();
    let text = String::from_utf8(body.clone()).unwrap();
    assert!(!text.contains("[DONE]"));
    assert!(!text.contains("\"usage\""));
    let file = fixture_bytes("openai/text_stop.sse");
    let n = events_of(&file).len();
    assert_eq!(chunks.len(), n - 2);
    // What remains is an exact prefix of the recording, ending with the finish chunk.
    assert!(file.starts_with(&body));
    let evs = json_events(&body);
    assert_eq!(evs.last().unwrap()["choices"][0]["finish_reason"], "stop");
}

#[tokio::test(start_paused = true)]
async fn omit_usage_keeps_done() {
    let (chunks, _) = stream_body(Reply::text(&["a", "b"]).fault(Fault::OmitUsage)).await;
    let body = chunks.concat();
    let text = String::from_utf8(body).unwrap();
    assert!(!text.contains("usage"));
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(chunks.len(), 5, "role, 2 words, finish, [DONE]");
}

#[tokio::test(start_paused = true)]
async fn fragment_splits_events_into_small_chunks_that_reassemble() {
    let reply = Reply::text(&["naïve", "日本語", "🙂"]).fault(Fault::Fragment(3));
    let (expected, _) = stream_body(Reply::text(&["naïve", "日本語", "🙂"])).await;
    let (chunks, _) = stream_body(reply).await;
    let expected = expected.concat();
    assert_eq!(chunks.concat(), expected);
    assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= 3));
    assert!(chunks.len() >= expected.len() / 3);
    // Some split falls inside a multi-byte UTF-8 character.
    assert!(chunks.iter().any(|c| std::str::from_utf8(c).is_err()));
}

#[tokio::test(start_paused = true)]
async fn malformed_at_replaces_one_event() {
    let (chunks, _) = stream_body(Reply::text(&["a", "b"]).fault(Fault::MalformedAt(1))).await;
    assert_eq!(chunks.len(), 6);
    assert_eq!(&chunks[1][..], b"data: {not json\n\n");
    assert!(chunks[2].starts_with(b"data: {\""));
}

#[tokio::test(start_paused = true)]
async fn non_streaming_request_gets_a_chat_completion() {
    let script = Script::single(Reply::fixture("openai/text_stop.sse"))
        .then(Reply::fixture("openai/tool_call.sse"))
        .then(Reply::fixture("openai/length.sse").fault(Fault::OmitUsage));
    let mock = MockProvider::start(script).await.unwrap();
    let mut c = Client::connect(mock.addr()).await;
    let mut replies = Vec::new();
    for _ in 0..3 {
        c.chat(false).await;
        let head = c.read_head().await.unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.header("content-type"), Some("application/json"));
        let len = head.header("content-length").unwrap().parse().unwrap();
        let body = c.read_exact_body(len).await.unwrap();
        replies.push(serde_json::from_slice::<serde_json::Value>(&body).unwrap());
    }
    let [text, tool, length] = &replies[..] else {
        panic!()
    };
    assert_eq!(text["object"], "chat.completion");
    assert_eq!(text["id"], "chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL");
    let content = text["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        content.starts_with("I'm unable to provide real-time weather"),
        "{content}"
    );
    assert_eq!(text["choices"][0]["finish_reason"], "stop");
    assert!(text["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let call = &tool["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_4XzlGBLtUe9dy3GVNV4jhq7h");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        call["function"]["arguments"],
        "{\"city\":\"New York City\"}"
    );
    assert_eq!(
        tool["choices"][0]["message"]["content"],
        serde_json::Value::Null
    );
    assert_eq!(tool["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(tool["usage"]["total_tokens"], 60);

    assert_eq!(length["choices"][0]["finish_reason"], "length");
    assert_eq!(length["usage"], serde_json::Value::Null);
}

#[test]
#[should_panic(expected = "cannot read fixture \"openai/missing.sse\"")]
fn missing_fixture_panics_clearly() {
    let _ = Reply::fixture("openai/missing.sse");
}
