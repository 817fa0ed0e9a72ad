//! Helpers for the `/v1/chat/completions` tests: a server with one
//! pipeline `chat` (a 200-token ceiling) at the mock, the tools they offer,
//! and readers of a streamed completion.

use serde_json::{Value, json};
use sluice::serve::RunningServer;
use sluice_testkit::MockProvider;

use super::{post_json, send, serve_chat};

/// A server with one pipeline `chat` on a provider of `kind` at the mock;
/// `extra` is appended to the pipeline (tools, say).
pub async fn serve(mock: &MockProvider, kind: &str, extra: &str) -> RunningServer {
    serve_chat(
        mock,
        kind,
        "",
        &format!("limits: {{max_tokens: 200}}\n{extra}"),
    )
    .await
}

pub const WEATHER_TOOL: &str = r#"{"type":"function","function":{"name":"get_weather","description":"Weather in a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]},"strict":true}}"#;

pub async fn chat(addr: std::net::SocketAddr, body: &str) -> http::Response<hyper::body::Incoming> {
    send(addr, post_json("/v1/chat/completions", body)).await
}

/// Every `data:` payload of a streamed chat completion, `[DONE]` as a string.
pub async fn chunks(resp: http::Response<hyper::body::Incoming>) -> Vec<Value> {
    use http_body_util::BodyExt;
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let mut parser = sluice::provider::sse::SseParser::new();
    let mut events = Vec::new();
    parser.push(&body, &mut events).unwrap();
    parser.finish(&mut events);
    events
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap_or_else(|_| json!(e.data)))
        .collect()
}

/// The tool-call pieces of a stream, in order.
pub fn tool_call_pieces(chunks: &[Value]) -> Vec<Value> {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flat_map(|calls| calls.iter().cloned())
        .collect()
}

pub fn finish_reasons(chunks: &[Value]) -> Vec<String> {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .map(str::to_string)
        .collect()
}

pub async fn post_json_to(
    addr: std::net::SocketAddr,
    path: &str,
    body: &str,
) -> http::Response<hyper::body::Incoming> {
    send(addr, post_json(path, body)).await
}
