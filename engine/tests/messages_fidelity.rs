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
