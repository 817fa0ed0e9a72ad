//! The Anthropic Messages wire: `POST …/messages` streams, errors shaped
//! like Anthropic's, non-streaming `message`s, floods and body faults.

mod common;

use std::time::Duration;

use common::{Client, T, events_of, fixture_bytes, json_events};
use serde_json::{Value, json};
use sluice_testkit::{Fault, MockProvider, Reply, Script};
use tokio::time::Instant;

fn messages_body(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 64,
        "stream": stream,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "hi"}],
    })
}

/// Posts to `/v1/messages` and reads the whole streamed body.
async fn stream_messages(mock: &MockProvider) -> Vec<u8> {
    let mut c = Client::connect(mock.addr()).await;
    c.post("/v1/messages", &messages_body(true)).await;
    let head = c.read_head().await.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    c.read_body().await.unwrap()
}

/// (event name, data JSON) of each event.
fn named_events(body: &[u8]) -> Vec<(String, Value)> {
    events_of(body)
        .iter()
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            (name.to_owned(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

/// Reads a `content-length` JSON answer: (status, body).
async fn json_answer(c: &mut Client) -> (u16, Value) {
    let head = c.read_head().await.unwrap();
    assert_eq!(head.header("content-type"), Some("application/json"));
    let len = head.header("content-length").unwrap().parse().unwrap();
    let body = c.read_exact_body(len).await.unwrap();
    (head.status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test(start_paused = true)]
async fn anthropic_text_synthesizes_a_messages_stream() {
    let mock = MockProvider::start(Script::single(Reply::anthropic_text(&[
        "Hel", "lo", " wörld",
    ])))
    .await
    .unwrap();
    let body = stream_messages(&mock).await;
    let evs = named_events(&body);
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    // The data's type repeats the event name, as Anthropic sends it.
    assert!(evs.iter().all(|(n, d)| d["type"] == n.as_str()));
    let text: String = evs
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "Hello wörld");
    assert_eq!(evs[0].1["message"]["usage"]["input_tokens"], 10);
    assert_eq!(evs[7].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(evs[7].1["usage"], json!({"output_tokens": 3}));

    let rec = mock.journal().wait_reply_done(0, T).await.unwrap();
    assert_eq!(rec.path, "/v1/messages");
    assert_eq!(rec.body["system"], "Be brief.");
    assert_eq!(rec.slot, Some(0));
    assert!(rec.completed_at.is_some());
}

#[tokio::test(start_paused = true)]
async fn recorded_anthropic_body_replays_on_messages() {
    let mock = MockProvider::start(Script::single(Reply::fixture("anthropic/tool_use.sse")))
        .await
        .unwrap();
    let body = stream_messages(&mock).await;
    let mut expected = fixture_bytes("anthropic/tool_use.sse");
    expected.extend_from_slice(b"\n\n");
    assert_eq!(body, expected);
}

#[tokio::test(start_paused = true)]
async fn status_faults_answer_anthropic_error_bodies_on_messages() {
    let script = Script::single(Reply::anthropic_text(&["x"]).fault(Fault::Status {
        status: 529,
        retry_after: None,
    }))
    .then(Reply::anthropic_text(&["x"]).fault(Fault::Status {
        status: 429,
        retry_after: Some(3),
    }))
    .then(Reply::anthropic_text(&["x"]).fault(Fault::Status {
        status: 500,
        retry_after: None,
    }))
    .then(Reply::anthropic_text(&["x"]).fault(Fault::Status {
        status: 529,
        retry_after: None,
    }));
    let mock = MockProvider::start(script).await.unwrap();
    let mut c = Client::connect(mock.addr()).await;
    let mut kinds = Vec::new();
    for _ in 0..3 {
        c.post("/v1/messages", &messages_body(true)).await;
        let (status, body) = json_answer(&mut c).await;
        assert_eq!(body["type"], "error");
        assert!(body["error"]["message"].is_string());
        kinds.push((status, body["error"]["type"].as_str().unwrap().to_owned()));
    }
    assert_eq!(
        kinds,
        [
            (529, "overloaded_error".to_owned()),
            (429, "rate_limit_error".to_owned()),
            (500, "api_error".to_owned()),
        ]
    );
    // The same fault on the OpenAI path keeps the OpenAI shape.
    c.chat(true).await;
    let (status, body) = json_answer(&mut c).await;
    assert_eq!(status, 529);
    assert!(body["error"]["code"].is_string() && body.get("type").is_none());
    let paths: Vec<String> = mock
        .journal()
        .requests()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(
        paths,
        [
            "/v1/messages",
            "/v1/messages",
            "/v1/messages",
            "/v1/chat/completions"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn non_streaming_messages_request_gets_a_message() {
    let mock = MockProvider::start(Script::single(Reply::fixture("anthropic/tool_use.sse")))
        .await
        .unwrap();
    let mut c = Client::connect(mock.addr()).await;
    c.post("/v1/messages", &messages_body(false)).await;
    let (status, m) = json_answer(&mut c).await;
    assert_eq!(status, 200);
    assert_eq!(m["type"], "message");
    assert_eq!(m["id"], "msg_019Q1hrJbZG26Fb9BQhrkHEr");
    assert_eq!(m["stop_reason"], "tool_use");
    assert_eq!(m["usage"]["output_tokens"], 65);
    assert_eq!(m["usage"]["input_tokens"], 377);
    assert_eq!(
        m["content"][0],
        json!({"type": "text", "text": "I'll check the current weather in Paris for you."})
    );
    assert_eq!(m["content"][1]["type"], "tool_use");
    assert_eq!(m["content"][1]["id"], "toolu_01NRLabsLyVHZPKxbKvkfSMn");
    assert_eq!(m["content"][1]["input"], json!({"location": "Paris"}));
}

#[tokio::test(start_paused = true)]
async fn truncate_and_omit_usage_on_the_anthropic_wire() {
    let script = Script::single(Reply::anthropic_text(&["a", "b"]).fault(Fault::Truncate))
        .then(Reply::anthropic_text(&["a", "b"]).fault(Fault::OmitUsage));
    let mock = MockProvider::start(script).await.unwrap();

    // Truncate: no message_stop, and message_delta keeps its stop reason
    // but loses its usage.
    let evs = named_events(&stream_messages(&mock).await);
    assert_eq!(evs.last().unwrap().0, "message_delta");
    let delta = &evs.last().unwrap().1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert!(delta.get("usage").is_none());

    // OmitUsage: message_stop stays.
    let evs = named_events(&stream_messages(&mock).await);
    assert_eq!(evs.last().unwrap().0, "message_stop");
    let delta = &evs[evs.len() - 2].1;
    assert_eq!(delta["type"], "message_delta");
    assert!(delta.get("usage").is_none());
}

#[tokio::test(start_paused = true)]
async fn anthropic_flood_streams_text_deltas_until_the_client_closes() {
    let mock = MockProvider::start(Script::single(Reply::anthropic_flood("tok")))
        .await
        .unwrap();
    let journal = mock.journal();
    let mut c = Client::connect(mock.addr()).await;
    c.post("/v1/messages", &messages_body(true)).await;
    c.read_head().await.unwrap();
    let mut chunks = Vec::new();
    for _ in 0..300 {
        chunks.push(c.read_chunk().await.unwrap().expect("flood never ends"));
    }
    let evs = json_events(&chunks.concat());
    let kinds: Vec<&str> = evs[..4]
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta"
        ]
    );
    assert!(evs[3..].iter().all(|e| e["delta"]["text"] == "tok"));
    let dropped_at = Instant::now();
    drop(c);
    let closed = journal.wait_closed(0, T).await.unwrap();
    assert!(closed - dropped_at < Duration::from_millis(5));
    assert_eq!(journal.request(0).unwrap().completed_at, None);
}

#[tokio::test(start_paused = true)]
async fn unknown_routes_and_bad_json_on_messages() {
    let mock = MockProvider::start(Script::single(Reply::anthropic_text(&["x"])))
        .await
        .unwrap();
    let mut c = Client::connect(mock.addr()).await;
    c.send_raw(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{nope")
        .await;
    let (status, body) = json_answer(&mut c).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    c.send_raw(b"GET /v1/messages/batches HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let (status, _) = json_answer(&mut c).await;
    assert_eq!(status, 404);
    // Neither took a script slot.
    let slots: Vec<_> = mock.journal().requests().iter().map(|r| r.slot).collect();
    assert_eq!(slots, [None, None]);
}
