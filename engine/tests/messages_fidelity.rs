//! `/v1/messages` where a client could be told something else than what
//! happened: the provider's own kind of error, the fields a 400 names,
//! tool-call arguments an OpenAI-compatible provider interleaves with
//! text, thinking beside a forced tool choice or a squeezed max_tokens.
//! Paused clock, in-memory ledger, the testkit's mock provider.

mod common;

use std::net::SocketAddr;

use common::*;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice::serve::RunningServer;
use sluice_testkit::{Fault, MockProvider, Reply, Script};

/// A server with one pipeline `chat` on a provider of `kind` at the mock.
async fn serve(mock: &MockProvider, kind: &str, extra: &str) -> RunningServer {
    serve_chat(
        mock,
        kind,
        "",
        &format!("limits: {{max_tokens: 200}}\n{extra}"),
    )
    .await
}

async fn messages(addr: SocketAddr, body: &Value) -> http::Response<hyper::body::Incoming> {
    let mut req = post_json("/v1/messages", &body.to_string());
    let h = req.headers_mut();
    h.insert("anthropic-version", "2023-06-01".parse().unwrap());
    h.insert("x-request-id", "req-fixed".parse().unwrap());
    send(addr, req).await
}

/// Every event of a streamed answer: (name, data).
async fn events(resp: http::Response<hyper::body::Incoming>) -> Vec<(String, Value)> {
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let mut parser = sluice::provider::sse::SseParser::new();
    let mut out = Vec::new();
    parser.push(&body, &mut out).unwrap();
    parser.finish(&mut out);
    out.into_iter()
        .map(|e| {
            (
                e.event.unwrap_or_default(),
                serde_json::from_str(&e.data).unwrap(),
            )
        })
        .collect()
}

/// The error object of an Anthropic-shaped error answer of `status`.
async fn error_of(resp: http::Response<hyper::body::Incoming>, status: u16) -> Value {
    assert_eq!(resp.status(), status);
    let body = body_json(resp).await;
    assert_eq!(body["type"], "error", "{body}");
    body["error"].clone()
}

fn hi() -> Value {
    json!({"model": "chat", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]})
}

/// An Anthropic in-stream `overloaded_error` reaches a Messages client as
/// `overloaded_error`, streamed or not, and before the first token too.
#[tokio::test(start_paused = true)]
async fn the_providers_own_error_type_is_kept() {
    let late = Reply::anthropic_text(&["a", "b", "c"]).fault(Fault::ErrorEventAfter(4));
    let mock = MockProvider::start(Script::single(late.clone()).then(late))
        .await
        .unwrap();
    let server = serve(&mock, "anthropic", "").await;
    let mut streaming = hi();
    streaming["stream"] = json!(true);
    let streamed = events(messages(server.addr, &streaming).await).await;
    let (name, last) = streamed.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(last["error"]["type"], "overloaded_error", "{last}");
    let e = error_of(messages(server.addr, &hi()).await, 502).await;
    assert_eq!(e["type"], "overloaded_error", "{e}");
    server.stop().await;

    // Before the first token: tried again, then refused with its type.
    let early = Reply::anthropic_text(&["a"]).fault(Fault::ErrorEventAfter(0));
    let mock = MockProvider::start(Script::single(early)).await.unwrap();
    let server = serve(
        &mock,
        "anthropic",
        "retries: {attempts: 2, backoff: 10ms}\n",
    )
    .await;
    let e = error_of(messages(server.addr, &hi()).await, 502).await;
    assert_eq!(e["type"], "overloaded_error", "{e}");
    assert_eq!(mock.journal().request_count(), 2);
    server.stop().await;
}

const LOOKUP_TOOL: &str = r#"tools:
  - name: lookup_order
    description: Look up one order by its id
    parameters:
      type: object
      properties: {order_id: {type: integer, minimum: 1}}
      required: [order_id]
    sql: {database: shop, query: "SELECT id, status FROM orders WHERE id = :order_id"}
"#;

fn weather() -> Value {
    json!({"name": "get_weather", "input_schema": {"type": "object"}})
}

/// `hi()` with `extra`'s fields set.
fn with(extra: Value) -> Value {
    let mut v = hi();
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// Sends `body`; the 400's message must start with `field` (the field as
/// the Messages client sent it) and mention none of Sluice's own names.
async fn refused_naming(addr: SocketAddr, body: &Value, field: &str) -> String {
    let e = error_of(messages(addr, body).await, 400).await;
    assert_eq!(e["type"], "invalid_request_error");
    let text = e["message"].as_str().unwrap().to_string();
    assert!(
        [":", " "]
            .iter()
            .any(|end| text.starts_with(&format!("{field}{end}"))),
        "{body}: expected {field}, got {text}"
    );
    for internal in ["\"stop\"", "\"user\"", "messages[", "parallel_tool_calls:"] {
        if !field.starts_with("messages[") {
            assert!(
                !text.contains(internal),
                "{body}: {text} names Sluice's {internal}"
            );
        }
    }
    text
}

/// Every 400 the pipeline's rules and providers give a Messages client
/// names the field as that client sent it: `system`, not `messages[0]`;
/// `stop_sequences`, not `stop`; `metadata.user_id`, not `user`.
#[tokio::test(start_paused = true)]
async fn a_400_names_the_field_as_the_messages_client_sent_it() {
    let mock = MockProvider::start(Script::single(Reply::anthropic_text(&["x"])))
        .await
        .unwrap();
    let rules = "clients:\n  params: [temperature, top_k]\n  bounds: {temperature: {min: 0, max: 0.5}}\n  tools: false\n  system: forbid\n";
    let server = serve(&mock, "anthropic", rules).await;
    let addr = server.addr;
    refused_naming(addr, &with(json!({"system": "Be terse."})), "system").await;
    refused_naming(
        addr,
        &with(json!({"system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}}]})),
        "system",
    )
    .await;
    let text = refused_naming(
        addr,
        &with(json!({"stop_sequences": ["END"]})),
        "stop_sequences",
    )
    .await;
    assert!(
        text.contains("\"stop_sequences\"") && text.contains("(they may set: temperature, top_k)"),
        "{text}"
    );
    refused_naming(
        addr,
        &with(json!({"metadata": {"user_id": "u-1"}})),
        "metadata.user_id",
    )
    .await;
    refused_naming(addr, &with(json!({"temperature": 0.9})), "temperature").await;
    refused_naming(addr, &with(json!({"tools": [weather()]})), "tools").await;
    refused_naming(
        addr,
        &with(json!({"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2000})),
        "thinking",
    )
    .await;
    assert_eq!(mock.journal().request_count(), 0);
    server.stop().await;

    // A pipeline that answers with several choices cannot be asked over
    // an API without `n`: the model (the pipeline) is at fault.
    let server = serve(&mock, "openai", "clients:\n  bounds: {n: {min: 2}}\n").await;
    let text = refused_naming(server.addr, &hi(), "model").await;
    assert!(text.contains("pipeline \"chat\""), "{text}");
    server.stop().await;

    // What an OpenAI-wire provider cannot take, by the client's names.
    let server = serve(&mock, "openai", "").await;
    let addr = server.addr;
    refused_naming(
        addr,
        &with(json!({"stop_sequences": ["a", "b", "c", "d", "e"]})),
        "stop_sequences",
    )
    .await;
    refused_naming(addr, &with(json!({"top_k": 5})), "top_k").await;
    let marked = json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"},
        {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}}]}]});
    refused_naming(addr, &with(marked), "messages[0].content[1].cache_control").await;
    let marked = json!({"tools": [weather(), {"name": "b", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}]});
    refused_naming(addr, &with(marked), "tools[1].cache_control").await;
    let marked =
        json!({"system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]});
    refused_naming(addr, &with(marked), "system[0].cache_control").await;
    // Tool choices checked with the pipeline.
    refused_naming(
        addr,
        &with(json!({"tool_choice": {"type": "auto", "disable_parallel_tool_use": true}})),
        "tool_choice.disable_parallel_tool_use",
    )
    .await;
    assert_eq!(mock.journal().request_count(), 0);
    server.stop().await;

    let server = serve(&mock, "anthropic", LOOKUP_TOOL).await;
    refused_naming(
        server.addr,
        &with(json!({"tool_choice": {"type": "tool", "name": "nope"}})),
        "tool_choice.name",
    )
    .await;
    refused_naming(
        server.addr,
        &with(json!({"tools": [{"name": "lookup_order", "input_schema": {"type": "object"}}]})),
        "tools[0].name",
    )
    .await;
    assert_eq!(mock.journal().request_count(), 0);
    server.stop().await;
}
