//! `/v1/messages` as the Anthropic SDKs use it, over an OpenAI-wire and an
//! Anthropic-wire provider: the exact stream event sequence, text,
//! thinking with its signature, the client's tool_use round trip, stop
//! reasons, the non-streamed message equal to the assembled stream,
//! errors in Anthropic's shape, and count_tokens. Paused clock, in-memory
//! ledger, the testkit's mock provider.

mod common;

use std::net::SocketAddr;

use common::*;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice::provider::{Message, Role, ToolSpec};
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

/// A request as the Anthropic SDKs send it (their headers, a fixed id).
async fn messages(
    addr: SocketAddr,
    path: &str,
    body: &Value,
) -> http::Response<hyper::body::Incoming> {
    let mut req = post_json(path, &body.to_string());
    let h = req.headers_mut();
    h.insert("x-api-key", "sk-ant-anything".parse().unwrap());
    h.insert("anthropic-version", "2023-06-01".parse().unwrap());
    h.insert("x-request-id", "req-fixed".parse().unwrap());
    send(addr, req).await
}

/// Every event of a streamed answer: (name, data).
async fn events(resp: http::Response<hyper::body::Incoming>) -> Vec<(String, Value)> {
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["request-id"], "req-fixed");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let mut parser = sluice::provider::sse::SseParser::new();
    let mut out = Vec::new();
    parser.push(&body, &mut out).unwrap();
    parser.finish(&mut out);
    out.into_iter()
        .map(|e| {
            let data: Value = serde_json::from_str(&e.data).unwrap();
            let name = e.event.unwrap_or_default();
            // Each event's data names its type, as Anthropic's do.
            assert_eq!(data["type"], name.as_str(), "{data}");
            (name, data)
        })
        .collect()
}

/// Names with block indexes: `content_block_delta:1`.
fn shape(events: &[(String, Value)]) -> Vec<String> {
    events
        .iter()
        .map(|(name, d)| match d["index"].as_u64() {
            Some(i) => format!("{name}:{i}"),
            None => name.clone(),
        })
        .collect()
}

/// A recorded Anthropic stream: `blocks` are content blocks, each a start
/// block and its deltas; the message ends with `stop_reason` and usage.
fn anthropic_stream(blocks: &[(Value, Vec<Value>)], stop_reason: &str, usage: Value) -> Reply {
    anthropic_stream_stopped(blocks, stop_reason, Value::Null, usage)
}

/// [`anthropic_stream`], naming the stop sequence that matched.
fn anthropic_stream_stopped(
    blocks: &[(Value, Vec<Value>)],
    stop_reason: &str,
    stop_sequence: Value,
    usage: Value,
) -> Reply {
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut out = ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_up", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": usage["input_tokens"], "cache_read_input_tokens": usage["cache_read_input_tokens"],
                      "cache_creation_input_tokens": usage["cache_creation_input_tokens"], "output_tokens": 1}}}),
    );
    for (i, (start, deltas)) in blocks.iter().enumerate() {
        out += &ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": i, "content_block": start}),
        );
        for d in deltas {
            out += &ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": i, "delta": d}),
            );
        }
        out += &ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": i}),
        );
    }
    out += &ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence}, "usage": usage}),
    );
    out += &ev("message_stop", json!({"type": "message_stop"}));
    Reply::recorded(out)
}

fn thinking_reply() -> Reply {
    anthropic_stream(
        &[
            (
                json!({"type": "thinking", "thinking": "", "signature": ""}),
                vec![
                    json!({"type": "thinking_delta", "thinking": "The user wants "}),
                    json!({"type": "thinking_delta", "thinking": "a greeting."}),
                    json!({"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA"}),
                ],
            ),
            (
                json!({"type": "text", "text": ""}),
                vec![
                    json!({"type": "text_delta", "text": "Hello"}),
                    json!({"type": "text_delta", "text": " there."}),
                ],
            ),
        ],
        "end_turn",
        json!({"input_tokens": 5, "cache_read_input_tokens": 12, "cache_creation_input_tokens": 3, "output_tokens": 14}),
    )
}

#[tokio::test(start_paused = true)]
async fn text_over_an_openai_provider_streams_the_exact_sequence_and_matches_the_message() {
    let mock = MockProvider::start(
        Script::single(Reply::text(&["Hello", " world"])).then(Reply::text(&["Hello", " world"])),
    )
    .await
    .unwrap();
    let server = serve(&mock, "openai", "").await;
    let mut body = json!({"model": "chat", "max_tokens": 50, "stream": true,
        "system": "Be brief.", "messages": [{"role": "user", "content": "Say hello"}]});
    let streamed = events(messages(server.addr, "/v1/messages", &body).await).await;
    assert_eq!(
        shape(&streamed),
        [
            "message_start",
            "content_block_start:0",
            "content_block_delta:0",
            "content_block_delta:0",
            "content_block_stop:0",
            "message_delta",
            "message_stop"
        ]
    );
    let start = &streamed[0].1["message"];
    assert_eq!(start["id"], "msg_req-fixed");
    assert_eq!(start["role"], "assistant");
    assert_eq!(start["content"], json!([]));
    assert!(start["usage"]["input_tokens"].as_u64().unwrap() > 0);
    let assembled = assemble_message(&streamed);
    assert_eq!(
        assembled["content"],
        json!([{"type": "text", "text": "Hello world"}])
    );
    assert_eq!(assembled["stop_reason"], "end_turn");
    // The provider's usage (the mock reports prompt 10, one token a word).
    assert_eq!(assembled["usage"]["input_tokens"], 10);
    assert_eq!(assembled["usage"]["output_tokens"], 2);

    body["stream"] = json!(false);
    let resp = messages(server.addr, "/v1/messages", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["request-id"], "req-fixed");
    let whole = body_json(resp).await;
    assert_eq!(whole, assembled);
    assert_eq!(whole["type"], "message");

    // To the OpenAI provider: the system text first, then the user turn.
    let sent = &mock.journal().requests()[0].body;
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(sent["max_tokens"], 50);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn thinking_and_its_signature_from_an_anthropic_provider_reach_the_client() {
    let mock = MockProvider::start(Script::single(thinking_reply()).then(thinking_reply()))
        .await
        .unwrap();
    let server = serve_chat(&mock, "anthropic", "", "limits: {max_tokens: 2000}\n").await;
    let mut body = json!({"model": "chat", "max_tokens": 1100, "stream": true,
        "system": [{"type": "text", "text": "Be kind."}],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "top_k": 5, "temperature": 1, "stop_sequences": ["###"], "metadata": {"user_id": "u-1"},
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Greet me"}]}]});
    let streamed = events(messages(server.addr, "/v1/messages", &body).await).await;
    assert_eq!(
        shape(&streamed),
        [
            "message_start",
            "content_block_start:0",
            "content_block_delta:0",
            "content_block_delta:0",
            "content_block_delta:0",
            "content_block_stop:0",
            "content_block_start:1",
            "content_block_delta:1",
            "content_block_delta:1",
            "content_block_stop:1",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(
        streamed[0].1["message"]["model"],
        "claude-sonnet-4-5-20250929"
    );
    assert_eq!(streamed[4].1["delta"]["type"], "signature_delta");
    let assembled = assemble_message(&streamed);
    assert_eq!(
        assembled["content"],
        json!([
            {"type": "thinking", "thinking": "The user wants a greeting.", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA"},
            {"type": "text", "text": "Hello there."},
        ])
    );
    // The cached part of the prompt is reported apart, as Anthropic does.
    assert_eq!(
        assembled["usage"],
        json!({"input_tokens": 5, "output_tokens": 14, "cache_read_input_tokens": 12, "cache_creation_input_tokens": 3,
               "cache_creation": {"ephemeral_5m_input_tokens": 3, "ephemeral_1h_input_tokens": 0}})
    );
    let sent = &mock.journal().requests()[0].body;
    assert_eq!(
        sent["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
    assert_eq!(sent["max_tokens"], 1100);
    assert_eq!(sent["top_k"], 5);
    assert_eq!(sent["system"], "Be kind.");
    assert_eq!(sent["stop_sequences"], json!(["###"]));
    assert_eq!(sent["metadata"], json!({"user_id": "u-1"}));
    // The SDK's headers are accepted, not forwarded.
    let up = &mock.journal().requests()[0];
    assert_ne!(up.header("x-api-key"), Some("sk-ant-anything"));

    body["stream"] = json!(false);
    let whole = body_json(messages(server.addr, "/v1/messages", &body).await).await;
    assert_eq!(whole, assembled);
    server.stop().await;
}

const WEATHER: &str = r#"{"name": "get_weather", "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}"#;

#[tokio::test(start_paused = true)]
async fn the_clients_tool_use_streams_as_blocks_over_both_wires() {
    // OpenAI: one call, its arguments piece by piece.
    let mock = MockProvider::start(Script::single(Reply::fixture("openai/tool_call.sse")))
        .await
        .unwrap();
    let server = serve(&mock, "openai", "").await;
    let mut weather: Value = serde_json::from_str(WEATHER).unwrap();
    weather["strict"] = json!(true);
    let body = json!({"model": "chat", "max_tokens": 50, "stream": true,
        "messages": [{"role": "user", "content": "Weather in NYC?"}],
        "tools": [weather],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true}});
    let streamed = events(messages(server.addr, "/v1/messages", &body).await).await;
    let s = shape(&streamed);
    assert_eq!(s[..2], ["message_start", "content_block_start:0"]);
    assert_eq!(
        s[s.len() - 3..],
        ["content_block_stop:0", "message_delta", "message_stop"]
    );
    assert_eq!(
        streamed[1].1["content_block"],
        json!({"type": "tool_use", "id": "call_4XzlGBLtUe9dy3GVNV4jhq7h", "name": "get_weather", "input": {}})
    );
    let assembled = assemble_message(&streamed);
    assert_eq!(
        assembled["content"][0]["input"],
        json!({"city": "New York City"})
    );
    assert_eq!(assembled["stop_reason"], "tool_use");
    let sent = &mock.journal().requests()[0].body;
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(sent["tools"][0]["function"]["strict"], true);
    assert_eq!(sent["tool_choice"], "required");
    assert_eq!(sent["parallel_tool_calls"], false);
    server.stop().await;

    // Anthropic: text then the call, indexes 0 and 1.
    let mock = MockProvider::start(Script::single(Reply::fixture("anthropic/tool_use.sse")))
        .await
        .unwrap();
    let server = serve(&mock, "anthropic", "").await;
    let streamed = events(messages(server.addr, "/v1/messages", &body).await).await;
    let assembled = assemble_message(&streamed);
    assert_eq!(assembled["content"][0]["type"], "text");
    assert_eq!(
        assembled["content"][1],
        json!({"type": "tool_use", "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn", "name": "get_weather", "input": {"location": "Paris"}})
    );
    assert_eq!(assembled["stop_reason"], "tool_use");
    let sent = &mock.journal().requests()[0].body;
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert_eq!(sent["tools"][0]["strict"], true);
    server.stop().await;
}

/// The conversation after the client ran the tool (it failed).
fn round_trip() -> Value {
    json!({"model": "chat", "max_tokens": 50,
        "tools": [serde_json::from_str::<Value>(WEATHER).unwrap()],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in Paris?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": true,
                 "content": [{"type": "text", "text": "service down"}]}]}]})
}

#[tokio::test(start_paused = true)]
async fn a_tool_result_reaches_each_provider_in_its_own_shape() {
    let mock = MockProvider::start(Script::single(Reply::text(&["Sorry", "."])))
        .await
        .unwrap();
    let server = serve(&mock, "openai", "").await;
    let answer = body_json(messages(server.addr, "/v1/messages", &round_trip()).await).await;
    assert_eq!(
        answer["content"],
        json!([{"type": "text", "text": "Sorry."}])
    );
    let sent = &mock.journal().requests()[0].body;
    let msgs = sent["messages"].as_array().unwrap();
    assert_eq!(
        msgs[0]["content"][1]["image_url"]["url"],
        "data:image/png;base64,iVBORw0KGgo="
    );
    assert_eq!(msgs[1]["tool_calls"][0]["id"], "toolu_1");
    assert_eq!(
        msgs[1]["tool_calls"][0]["function"]["arguments"],
        r#"{"city":"Paris"}"#
    );
    assert_eq!(msgs[2]["role"], "tool");
    assert_eq!(msgs[2]["tool_call_id"], "toolu_1");
    assert_eq!(msgs[2]["content"], "error: service down");
    server.stop().await;

    let mock = MockProvider::start(Script::single(Reply::anthropic_text(&["Sorry", "."])))
        .await
        .unwrap();
    let server = serve(&mock, "anthropic", "").await;
    let answer = body_json(messages(server.addr, "/v1/messages", &round_trip()).await).await;
    assert_eq!(
        answer["content"],
        json!([{"type": "text", "text": "Sorry."}])
    );
    let sent = &mock.journal().requests()[0].body;
    let msgs = sent["messages"].as_array().unwrap();
    assert_eq!(
        msgs[1]["content"],
        json!([{"type": "text", "text": "Checking."},
               {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}])
    );
    assert_eq!(
        msgs[2],
        json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
            "content": "service down", "is_error": true}]})
    );
    server.stop().await;
}

/// An OpenAI stream that refuses.
fn openai_refusal() -> Reply {
    let chunk = |delta: Value, finish: Option<&str>| {
        let c = json!({"id": "r", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let mut out = chunk(json!({"role": "assistant", "refusal": ""}), None);
    out += &chunk(json!({"refusal": "I can't help with that."}), None);
    out += &chunk(json!({}), Some("stop"));
    out += "data: [DONE]\n\n";
    Reply::recorded(out)
}

#[tokio::test(start_paused = true)]
async fn stop_reasons_max_tokens_and_refusal() {
    let ask =
        json!({"model": "chat", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]});
    for (kind, reply, want) in [
        ("openai", Reply::fixture("openai/length.sse"), "max_tokens"),
        ("openai", openai_refusal(), "refusal"),
        (
            "anthropic",
            anthropic_stream(
                &[(
                    json!({"type": "text", "text": ""}),
                    vec![json!({"type": "text_delta", "text": "No."})],
                )],
                "refusal",
                json!({"input_tokens": 3, "output_tokens": 2}),
            ),
            "refusal",
        ),
        (
            "anthropic",
            anthropic_stream(
                &[(
                    json!({"type": "text", "text": ""}),
                    vec![json!({"type": "text_delta", "text": "Hel"})],
                )],
                "max_tokens",
                json!({"input_tokens": 3, "output_tokens": 1}),
            ),
            "max_tokens",
        ),
    ] {
        let mock = MockProvider::start(Script::single(reply.clone()).then(reply))
            .await
            .unwrap();
        let server = serve(&mock, kind, "").await;
        let whole = body_json(messages(server.addr, "/v1/messages", &ask).await).await;
        assert_eq!(whole["stop_reason"], want, "{kind}: {whole}");
        assert_eq!(whole["content"][0]["type"], "text");
        let mut streaming = ask.clone();
        streaming["stream"] = json!(true);
        let streamed = events(messages(server.addr, "/v1/messages", &streaming).await).await;
        assert_eq!(assemble_message(&streamed), whole, "{kind}");
        server.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_stop_sequence_that_matched_is_named() {
    let reply = anthropic_stream_stopped(
        &[(
            json!({"type": "text", "text": ""}),
            vec![json!({"type": "text_delta", "text": "One, two"})],
        )],
        "stop_sequence",
        json!(", three"),
        json!({"input_tokens": 4, "output_tokens": 3}),
    );
    let mock = MockProvider::start(
        Script::single(reply.clone())
            .then(reply.clone())
            .then(reply),
    )
    .await
    .unwrap();
    let server = serve(&mock, "anthropic", "").await;
    let ask = json!({"model": "chat", "max_tokens": 50, "stop_sequences": [", three", "four"],
                     "messages": [{"role": "user", "content": "Count to five"}]});
    let whole = body_json(messages(server.addr, "/v1/messages", &ask).await).await;
    assert_eq!(whole["stop_reason"], "stop_sequence", "{whole}");
    assert_eq!(whole["stop_sequence"], ", three", "{whole}");
    assert_eq!(
        whole["content"],
        json!([{"type": "text", "text": "One, two"}])
    );
    assert_eq!(
        mock.journal().requests()[0].body["stop_sequences"],
        json!([", three", "four"])
    );

    let mut streaming = ask.clone();
    streaming["stream"] = json!(true);
    let streamed = events(messages(server.addr, "/v1/messages", &streaming).await).await;
    let (_, delta) = streamed
        .iter()
        .find(|(name, _)| name == "message_delta")
        .expect("a message_delta");
    assert_eq!(
        delta["delta"],
        json!({"stop_reason": "stop_sequence", "stop_sequence": ", three"})
    );
    assert_eq!(assemble_message(&streamed), whole);

    // Chat Completions has no name for it: `stop`.
    let chat = json!({"model": "chat", "stop": [", three"],
                      "messages": [{"role": "user", "content": "Count to five"}]});
    let resp = send(
        server.addr,
        post_json("/v1/chat/completions", &chat.to_string()),
    )
    .await;
    let body = body_json(resp).await;
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
    server.stop().await;
}

async fn error_of(resp: http::Response<hyper::body::Incoming>, status: u16) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["request-id"], "req-fixed");
    let body = body_json(resp).await;
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["request_id"], "req-fixed");
    body["error"].clone()
}

#[tokio::test(start_paused = true)]
async fn errors_take_anthropics_shape() {
    let mock = MockProvider::start(
        Script::single(Reply::anthropic_text(&["a", "b", "c"]).fault(Fault::ErrorEventAfter(4)))
            .then(Reply::anthropic_text(&["x"]).fault(Fault::Status {
                status: 400,
                retry_after: None,
            })),
    )
    .await
    .unwrap();
    let server = serve(&mock, "anthropic", "").await;
    let ok =
        json!({"model": "chat", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});

    let mut unknown = ok.clone();
    unknown["model"] = json!("nope");
    let e = error_of(messages(server.addr, "/v1/messages", &unknown).await, 404).await;
    assert_eq!(e["type"], "not_found_error");
    assert!(e["message"].as_str().unwrap().contains("nope"));

    for (body, field) in [
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}),
            "max_tokens",
        ),
        (
            json!({"model": "chat", "max_tokens": 5, "n": 2, "messages": []}),
            "n",
        ),
        (
            json!({"model": "chat", "max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "hi", "cache_control": {"type": "forever"}}]}]}),
            "messages[0].content[0].cache_control",
        ),
        (
            json!({"model": "chat", "max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "document", "source": {}}]}]}),
            "messages[0].content[0].type",
        ),
    ] {
        let e = error_of(messages(server.addr, "/v1/messages", &body).await, 400).await;
        assert_eq!(e["type"], "invalid_request_error");
        assert!(e["message"].as_str().unwrap().starts_with(field), "{e}");
    }

    // Failing after the stream started: an error event, and no message_stop.
    let mut streaming = ok.clone();
    streaming["stream"] = json!(true);
    let streamed = events(messages(server.addr, "/v1/messages", &streaming).await).await;
    let (name, last) = streamed.last().unwrap();
    assert_eq!(name, "error");
    // The provider's own type of error, as Anthropic documents it.
    assert_eq!(last["error"]["type"], "overloaded_error");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Overloaded")
    );
    assert!(!shape(&streamed).contains(&"message_stop".to_string()));

    // The provider refusing the call before any token: a status.
    let e = error_of(messages(server.addr, "/v1/messages", &ok).await, 502).await;
    assert_eq!(e["type"], "api_error");
    server.stop().await;

    // What an OpenAI-wire pipeline cannot take is refused before any call.
    let mock = MockProvider::start(Script::single(Reply::text(&["x"])))
        .await
        .unwrap();
    let server = serve(&mock, "openai", "").await;
    let mut top_k = ok.clone();
    top_k["top_k"] = json!(3);
    let e = error_of(messages(server.addr, "/v1/messages", &top_k).await, 400).await;
    assert!(e["message"].as_str().unwrap().starts_with("top_k"), "{e}");
    assert_eq!(mock.journal().request_count(), 0);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn count_tokens_is_sluices_estimate_of_what_would_be_sent() {
    let mock = MockProvider::start(Script::single(Reply::text(&["x"])))
        .await
        .unwrap();
    let server = serve(
        &mock,
        "openai",
        "system: You answer questions about weather.\n",
    )
    .await;
    let body = json!({"model": "chat", "system": "Be brief.",
        "messages": [{"role": "user", "content": "What is the weather in Paris today?"}],
        "tools": [serde_json::from_str::<Value>(WEATHER).unwrap()]});
    let resp = messages(server.addr, "/v1/messages/count_tokens", &body).await;
    assert_eq!(resp.status(), 200);
    let counted = body_json(resp).await;
    let prompt = [
        Message::new(Role::System, "You answer questions about weather."),
        Message::new(Role::System, "Be brief."),
        Message::new(Role::User, "What is the weather in Paris today?"),
    ];
    let tool: Value = serde_json::from_str(WEATHER).unwrap();
    let tools = [ToolSpec {
        name: "get_weather".into(),
        description: "Weather in a city".into(),
        parameters: tool["input_schema"].clone(),
        strict: None,
        cache_control: None,
    }];
    let want = sluice::tokens::count_prompt(&prompt) + sluice::tokens::count_tools(&tools);
    assert_eq!(counted, json!({"input_tokens": want}));
    assert_eq!(
        mock.journal().request_count(),
        0,
        "counting calls no provider"
    );

    // The same validation as /v1/messages.
    let mut unknown = body.clone();
    unknown["model"] = json!("nope");
    let e = error_of(
        messages(server.addr, "/v1/messages/count_tokens", &unknown).await,
        404,
    )
    .await;
    assert_eq!(e["type"], "not_found_error");
    let mut bad = body.clone();
    bad["messages"] = json!([{"role": "user", "content": [{"type": "video"}]}]);
    let e = error_of(
        messages(server.addr, "/v1/messages/count_tokens", &bad).await,
        400,
    )
    .await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("messages[0].content[0].type"),
        "{e}"
    );
    server.stop().await;
}
