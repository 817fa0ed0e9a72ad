//! `/v1/messages` where a client could be told something else than what
//! happened: the provider's own kind of error, the fields a 400 names,
//! tool-call arguments an OpenAI-compatible provider interleaves with
//! text (or with other calls), an Anthropic provider's blocks in their
//! order, thinking budgets beside the ceiling, a forced tool choice or a
//! squeezed max_tokens.
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
    let streamed = events(post_messages(server.addr, &streaming).await).await;
    let (name, last) = streamed.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(last["error"]["type"], "overloaded_error", "{last}");
    let e = anthropic_error_of(post_messages(server.addr, &hi()).await, 502).await;
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
    let e = anthropic_error_of(post_messages(server.addr, &hi()).await, 502).await;
    assert_eq!(e["type"], "overloaded_error", "{e}");
    assert_eq!(mock.journal().request_count(), 2);
    server.stop().await;
}

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
    let e = anthropic_error_of(post_messages(addr, body).await, 400).await;
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

/// A turn that thinks, then calls the pipeline's `lookup_order`, having
/// generated `output` tokens (as the provider reports them).
fn think_then_lookup(output: u64) -> Reply {
    anthropic_reply(
        &[
            (
                json!({"type": "thinking", "thinking": "", "signature": ""}),
                vec![
                    json!({"type": "thinking_delta", "thinking": "Look up order 1."}),
                    json!({"type": "signature_delta", "signature": "EqQBCgIYAhIM"}),
                ],
            ),
            (
                json!({"type": "tool_use", "id": "toolu_1", "name": "lookup_order", "input": {}}),
                vec![json!({"type": "input_json_delta", "partial_json": "{\"order_id\": 1}"})],
            ),
        ],
        "tool_use",
        json!({"input_tokens": 100, "output_tokens": output}),
    )
}

fn thinking_ask(budget: u32) -> Value {
    json!({"model": "chat", "max_tokens": 4000,
        "thinking": {"type": "enabled", "budget_tokens": budget},
        "messages": [{"role": "user", "content": "Where is order 1?"}]})
}

/// Anthropic refuses thinking with a forced tool choice: a 400 naming
/// `tool_choice`, before any call, instead of the provider's refusal as a 502.
#[tokio::test(start_paused = true)]
async fn thinking_with_a_forced_tool_choice_is_refused_up_front() {
    let mock = MockProvider::start(Script::single(Reply::anthropic_text(&["x"])))
        .await
        .unwrap();
    let server = serve_chat(&mock, "anthropic", "", "limits: {max_tokens: 4000}\n").await;
    for choice in [
        json!({"type": "any"}),
        json!({"type": "tool", "name": "get_weather"}),
    ] {
        let mut body = thinking_ask(1024);
        body["tools"] = json!([weather()]);
        body["tool_choice"] = choice;
        refused_naming(server.addr, &body, "tool_choice").await;
    }
    assert_eq!(mock.journal().request_count(), 0);
    // auto and none are what thinking takes.
    for choice in [json!({"type": "auto"}), json!({"type": "none"})] {
        let mut body = thinking_ask(1024);
        body["tools"] = json!([weather()]);
        body["tool_choice"] = choice;
        assert_eq!(post_messages(server.addr, &body).await.status(), 200);
    }
    server.stop().await;
}

/// `max_total_tokens` lowers max_tokens round by round; the thinking
/// budget follows it down (Anthropic wants it below max_tokens and keeps
/// thinking on through a tool loop), and a round left with too little to
/// think ends the answer as the token budget does.
#[tokio::test(start_paused = true)]
async fn a_squeezed_round_sends_a_thinking_budget_anthropic_takes() {
    let answer = anthropic_reply(
        &[(
            json!({"type": "text", "text": ""}),
            vec![json!({"type": "text_delta", "text": "Delivered."})],
        )],
        "end_turn",
        json!({"input_tokens": 300, "output_tokens": 5}),
    );
    let mock = MockProvider::start(Script::single(think_then_lookup(50)).then(answer))
        .await
        .unwrap();
    let limits = format!("limits: {{max_tokens: 4000, max_total_tokens: 2500}}\n{LOOKUP_TOOL}");
    let server = serve_chat(&mock, "anthropic", "", &limits).await;
    let whole = body_json(post_messages(server.addr, &thinking_ask(3000)).await).await;
    assert_eq!(whole["stop_reason"], "end_turn", "{whole}");
    let sent = mock.journal().requests();
    assert_eq!(sent.len(), 2);
    for (round, r) in sent.iter().enumerate() {
        let max = r.body["max_tokens"].as_u64().unwrap();
        let budget = r.body["thinking"]["budget_tokens"].as_u64().unwrap();
        assert!(max < 2500, "round {round}: max_tokens {max}");
        assert_eq!(budget, max - 1, "round {round}: {}", r.body);
        assert_eq!(r.body["thinking"]["type"], "enabled");
    }
    // The second round hands the first's thinking back, signed.
    assert_eq!(
        sent[1].body["messages"][1]["content"][0]["type"],
        "thinking"
    );
    server.stop().await;

    // The first round used 1,500 tokens: another leaves under 1,025.
    let mock = MockProvider::start(Script::single(think_then_lookup(1400)))
        .await
        .unwrap();
    let server = serve_chat(&mock, "anthropic", "", &limits).await;
    let whole = body_json(post_messages(server.addr, &thinking_ask(2000)).await).await;
    assert_eq!(whole["stop_reason"], "max_tokens", "{whole}");
    assert_eq!(mock.journal().request_count(), 1);
    let rows = server.ledger().rows_since(0).await.unwrap();
    assert_eq!(rows[0].error_code.as_deref(), Some("token_ceiling"));
    server.stop().await;

    // Too little for thinking in the first round already: a 400 before
    // any call.
    let mock = MockProvider::start(Script::single(think_then_lookup(50)))
        .await
        .unwrap();
    let limits = format!("limits: {{max_tokens: 4000, max_total_tokens: 1000}}\n{LOOKUP_TOOL}");
    let server = serve_chat(&mock, "anthropic", "", &limits).await;
    let text = refused_naming(server.addr, &thinking_ask(2000), "thinking.budget_tokens").await;
    assert!(text.contains("max_total_tokens"), "{text}");
    assert_eq!(mock.journal().request_count(), 0);
    server.stop().await;
}

/// An OpenAI-compatible stream that sends text between two pieces of
/// one call's arguments, and interleaves two calls.
fn text_inside_calls() -> Reply {
    let chunk = |delta: Value, finish: Option<&str>| {
        let body = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {body}\n\n")
    };
    let call = |i: u32, id: Option<&str>, args: &str| {
        let mut c = json!({"index": i, "function": {"arguments": args}});
        if let Some(id) = id {
            c["id"] = json!(id);
            c["type"] = json!("function");
            c["function"]["name"] = json!("get_weather");
        }
        chunk(json!({"tool_calls": [c]}), None)
    };
    let mut out = chunk(json!({"role": "assistant", "content": "Checking."}), None);
    out += &call(0, Some("call_a"), "{\"city\":");
    out += &chunk(json!({"content": " One moment."}), None);
    out += &call(0, None, "\"Oslo\"}");
    out += &call(1, Some("call_b"), "{\"ci");
    out += &chunk(json!({"content": " And Rome."}), None);
    out += &call(1, None, "ty\":\"Rome\"}");
    out += &chunk(json!({}), Some("tool_calls"));
    out += "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":50,\"completion_tokens\":20,\"total_tokens\":70}}\n\n";
    out += "data: [DONE]\n\n";
    Reply::recorded(out)
}

/// Arguments that come after text for a call whose block is open reach
/// the client whole, streamed or not; the text follows the calls.
#[tokio::test(start_paused = true)]
async fn text_between_argument_pieces_loses_no_argument() {
    let mock = MockProvider::start(Script::single(text_inside_calls()))
        .await
        .unwrap();
    let server = serve(&mock, "openai", "").await;
    let mut body = with(json!({"tools": [weather()], "stream": true}));
    let streamed = events(post_messages(server.addr, &body).await).await;
    let assembled = assemble_message(&streamed);
    assert_eq!(
        assembled["content"],
        json!([
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {"city": "Rome"}},
            {"type": "text", "text": " One moment. And Rome."},
        ]),
        "{streamed:#?}"
    );
    assert_eq!(assembled["stop_reason"], "tool_use");
    body["stream"] = json!(false);
    let whole = body_json(post_messages(server.addr, &body).await).await;
    assert_eq!(whole, assembled);
    server.stop().await;
}

/// An Anthropic provider's blocks come one after another and each call's
/// block ends: text between two calls keeps its place, streamed or not.
/// A provider that sends more of a call after ending it is cut, not
/// relayed out of place.
#[tokio::test(start_paused = true)]
async fn text_between_an_anthropic_providers_calls_keeps_its_place() {
    let tool = |id: &str, args: &str| {
        (
            json!({"type": "tool_use", "id": id, "name": "get_weather", "input": {}}),
            vec![json!({"type": "input_json_delta", "partial_json": args})],
        )
    };
    let text = |t: &str| {
        (
            json!({"type": "text", "text": ""}),
            vec![json!({"type": "text_delta", "text": t})],
        )
    };
    let reply = anthropic_reply(
        &[
            text("Both."),
            tool("toolu_a", "{\"city\":\"Oslo\"}"),
            text("And Rome:"),
            tool("toolu_b", "{\"city\":\"Rome\"}"),
        ],
        "tool_use",
        json!({"input_tokens": 20, "output_tokens": 30}),
    );
    let mock = MockProvider::start(Script::single(reply)).await.unwrap();
    let server = serve(&mock, "anthropic", "").await;
    let mut body = with(json!({"tools": [weather()], "stream": true}));
    let streamed = events(post_messages(server.addr, &body).await).await;
    let assembled = assemble_message(&streamed);
    assert_eq!(
        assembled["content"],
        json!([
            {"type": "text", "text": "Both."},
            {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "text", "text": "And Rome:"},
            {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"city": "Rome"}},
        ])
    );
    body["stream"] = json!(false);
    let whole = body_json(post_messages(server.addr, &body).await).await;
    assert_eq!(whole, assembled);
    server.stop().await;

    // More of call 0 after its block's stop.
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut late = ev(
        "message_start",
        json!({"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 5, "output_tokens": 1}}}),
    );
    late += &ev(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {}}}),
    );
    late += &ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    );
    late += &ev(
        "content_block_delta",
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
    );
    let mock = MockProvider::start(Script::single(Reply::recorded(late)))
        .await
        .unwrap();
    let server = serve(&mock, "anthropic", "").await;
    let mut body = with(json!({"tools": [weather()], "stream": true}));
    let streamed = events(post_messages(server.addr, &body).await).await;
    let (name, last) = streamed.last().unwrap();
    assert_eq!(name, "error", "{streamed:?}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("after ending it"),
        "{last}"
    );
    body["stream"] = json!(false);
    let e = anthropic_error_of(post_messages(server.addr, &body).await, 502).await;
    assert_eq!(e["type"], "api_error");
    server.stop().await;
}

/// An Anthropic answer that thinks (signed), then says hello.
fn thinking_then_text() -> Reply {
    anthropic_reply(
        &[
            (
                json!({"type": "thinking", "thinking": "", "signature": ""}),
                vec![
                    json!({"type": "thinking_delta", "thinking": "A greeting."}),
                    json!({"type": "signature_delta", "signature": "EqQBCgIYAhIM"}),
                ],
            ),
            (
                json!({"type": "text", "text": ""}),
                vec![json!({"type": "text_delta", "text": "Hello."})],
            ),
        ],
        "end_turn",
        json!({"input_tokens": 5, "output_tokens": 14}),
    )
}

/// Anthropic refuses a thinking budget that is not below max_tokens, and
/// the provider gets max_tokens clamped to the pipeline's ceiling: a
/// budget that does not fit under what would be sent is a 400 naming it,
/// before any call, instead of a request the provider refuses.
#[tokio::test(start_paused = true)]
async fn a_thinking_budget_must_fit_under_the_max_tokens_sent() {
    let mock = MockProvider::start(Script::single(thinking_then_text()))
        .await
        .unwrap();
    let server = serve(&mock, "anthropic", "").await;
    let ask = |max_tokens: u32, budget: u32| {
        json!({"model": "chat", "max_tokens": max_tokens,
            "thinking": {"type": "enabled", "budget_tokens": budget},
            "messages": [{"role": "user", "content": "hi"}]})
    };
    // Within the client's own max_tokens, but not under the ceiling (200).
    let e = anthropic_error_of(post_messages(server.addr, &ask(2048, 1024)).await, 400).await;
    assert_eq!(e["type"], "invalid_request_error");
    let text = e["message"].as_str().unwrap();
    assert!(text.starts_with("thinking.budget_tokens:"), "{e}");
    assert!(text.contains("\"chat\"") && text.contains("(200)"), "{e}");
    assert_eq!(mock.journal().request_count(), 0);
    server.stop().await;

    let server = serve_chat(&mock, "anthropic", "", "limits: {max_tokens: 4000}\n").await;
    // Not under the client's own max_tokens, as Anthropic says.
    let e = anthropic_error_of(post_messages(server.addr, &ask(1100, 1100)).await, 400).await;
    assert_eq!(
        e["message"],
        "thinking.budget_tokens: must be less than max_tokens (1100)"
    );
    // Below the 1,024 Anthropic's smallest budget.
    let e = anthropic_error_of(post_messages(server.addr, &ask(1100, 1000)).await, 400).await;
    let text = e["message"].as_str().unwrap();
    assert!(
        text.starts_with("thinking.budget_tokens:") && text.contains("at least 1024"),
        "{e}"
    );
    assert_eq!(mock.journal().request_count(), 0);

    // A budget under what is sent goes through as given.
    let whole = body_json(post_messages(server.addr, &ask(1500, 1024)).await).await;
    assert_eq!(whole["content"][0]["type"], "thinking", "{whole}");
    let sent = &mock.journal().requests()[0].body;
    assert_eq!(sent["max_tokens"], 1500);
    assert_eq!(
        sent["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
    // count_tokens has no max_tokens: any budget is counted.
    let mut count = ask(1, 4096);
    count.as_object_mut().unwrap().remove("max_tokens");
    let n = body_json(
        send(
            server.addr,
            post_json("/v1/messages/count_tokens", &count.to_string()),
        )
        .await,
    )
    .await;
    assert!(n["input_tokens"].as_u64().unwrap() > 0, "{n}");
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn parallel_calls_interleaved_by_an_openai_provider_arrive_whole() {
    let reply = openai_tool_calls(&[
        ("call_a", "get_weather", r#"{"city":"Oslo"}"#),
        ("call_b", "get_weather", r#"{"city":"Rome"}"#),
    ]);
    let mock = MockProvider::start(Script::single(reply.clone()).then(reply))
        .await
        .unwrap();
    let server = serve(&mock, "openai", "").await;
    let mut body = json!({"model": "chat", "max_tokens": 50, "stream": true,
        "messages": [{"role": "user", "content": "Oslo and Rome?"}],
        "tools": [weather()]});
    let streamed = events(post_messages(server.addr, &body).await).await;
    let assembled = assemble_message(&streamed);
    assert_eq!(
        assembled["content"],
        json!([
            {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {"city": "Rome"}},
        ])
    );
    assert_eq!(assembled["stop_reason"], "tool_use");
    body["stream"] = json!(false);
    let whole = body_json(post_messages(server.addr, &body).await).await;
    assert_eq!(whole, assembled);
    server.stop().await;
}
