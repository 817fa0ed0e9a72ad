//! Tool calls on `/v1/chat/completions` and `/v1/messages`: how a turn
//! that asks for tools ends for the client (complete calls say
//! `tool_calls` / `tool_use`, cut ones `length`), which calls go back to
//! the client and which the pipeline runs, and calls whose name the
//! provider streams in pieces. Paused clock, the testkit's mock provider.

mod common;

use std::path::PathBuf;

use common::chat::*;
use common::*;
use serde_json::{Value, json};
use sluice_testkit::{MockProvider, Reply, Script};

#[tokio::test(start_paused = true)]
async fn a_non_streamed_answer_carries_the_tool_calls() {
    let mock = MockProvider::start(Script::single(Reply::fixture("openai/tool_call.sse")))
        .await
        .unwrap();
    let server = serve(&mock, "openai", "").await;
    let body = format!(
        r#"{{"model":"chat","messages":[{{"role":"user","content":"Weather in NYC?"}}],"tools":[{WEATHER_TOOL}]}}"#
    );
    let answer = body_json(chat(server.addr, &body).await).await;
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(
        choice["message"]["tool_calls"],
        json!([{"id": "call_4XzlGBLtUe9dy3GVNV4jhq7h", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"New York City\"}"}}])
    );
    assert_eq!(answer["model"], "gpt-4o-2024-08-06");
    assert_eq!(answer["usage"]["prompt_tokens"], 44);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_tool_call_cut_by_max_tokens_is_never_run() {
    // The recorded tool_use turn, but the provider stopped at max_tokens.
    let recorded = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/recorded/anthropic/tool_use.sse"),
    )
    .unwrap()
    .replace(
        "\"stop_reason\":\"tool_use\"",
        "\"stop_reason\":\"max_tokens\"",
    );
    assert!(recorded.contains("max_tokens\""));
    let tool = LOOKUP_TOOL
        .replace("lookup_order", "get_weather")
        .replace("order_id", "location");
    let mock = MockProvider::start(
        Script::single(Reply::recorded(recorded.clone())).then(Reply::recorded(recorded)),
    )
    .await
    .unwrap();
    let server = serve(&mock, "anthropic", &tool).await;
    let events = SseReader::new(
        post_json_to(server.addr, "/v1/pipelines/chat", r#"{"input":"Paris?"}"#).await,
    )
    .collect()
    .await;
    assert_eq!(
        find(&events, "done").unwrap().data["finish_reason"],
        "length"
    );
    assert!(find(&events, "tool_result").is_none());
    assert_eq!(mock.journal().request_count(), 1);

    // Through the OpenAI route, a client's cut call: `length`, not `tool_calls`.
    let server2 = serve(&mock, "anthropic", "").await;
    let body = format!(
        r#"{{"model":"chat","stream":true,"messages":[{{"role":"user","content":"Paris?"}}],"tools":[{WEATHER_TOOL}]}}"#
    );
    let streamed = chunks(chat(server2.addr, &body).await).await;
    assert_eq!(finish_reasons(&streamed), ["length"]);
    server.stop().await;
    server2.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_turn_asking_for_client_and_pipeline_tools_returns_the_clients_only() {
    let mock = MockProvider::start(Script::single(openai_tool_calls(&[
        ("call_a", "lookup_order", r#"{"order_id": 1}"#),
        ("call_b", "get_weather", r#"{"city": "Oslo"}"#),
    ])))
    .await
    .unwrap();
    let server = serve(&mock, "openai", LOOKUP_TOOL).await;
    let body = format!(
        r#"{{"model":"chat","stream":true,"messages":[{{"role":"user","content":"x"}}],"tools":[{WEATHER_TOOL}]}}"#
    );
    let streamed = chunks(chat(server.addr, &body).await).await;
    let pieces = tool_call_pieces(&streamed);
    assert!(pieces.iter().all(|p| p["index"] == 0), "{pieces:#?}");
    assert_eq!(pieces[0]["id"], "call_b");
    assert_eq!(pieces[0]["function"]["name"], "get_weather");
    let arguments: String = pieces
        .iter()
        .map(|p| p["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(arguments, r#"{"city": "Oslo"}"#);
    assert_eq!(finish_reasons(&streamed), ["tool_calls"]);
    // The pipeline's call of that turn was not run: one model call.
    assert_eq!(mock.journal().request_count(), 1);
    let sent = &mock.journal().requests()[0].body;
    let names: Vec<&str> = sent["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lookup_order", "get_weather"]);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_forced_tool_choice_applies_to_the_first_answer_only() {
    let mock = MockProvider::start(
        Script::single(openai_tool_calls(&[(
            "call_a",
            "lookup_order",
            r#"{"order_id": 1}"#,
        )]))
        .then(Reply::text(&["Shipped", "."])),
    )
    .await
    .unwrap();
    let server = serve(&mock, "openai", LOOKUP_TOOL).await;
    let body = r#"{"model":"chat","messages":[{"role":"user","content":"Order 1?"}],"tool_choice":"required"}"#;
    let answer = body_json(chat(server.addr, body).await).await;
    assert_eq!(answer["choices"][0]["message"]["content"], "Shipped.");
    let sent = mock.journal().requests();
    assert_eq!(sent[0].body["tool_choice"], "required");
    // Kept, it would make the model call a tool every round.
    assert_eq!(sent[1].body["tool_choice"], "auto");
    server.stop().await;
}

/// An OpenAI stream whose one turn calls a tool whose name comes in
/// `name_pieces` (the first with the call's id), then `arguments` in two
/// pieces, and ends with `finish`.
fn openai_call(id: &str, name_pieces: &[&str], arguments: &str, finish: &str) -> Reply {
    let chunk = |delta: Value, finish: Option<&str>| {
        let c = json!({"id": "chatcmpl-n", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let mut out = chunk(json!({"role": "assistant", "content": null}), None);
    for (k, piece) in name_pieces.iter().enumerate() {
        let call = if k == 0 {
            json!({"index": 0, "id": id, "type": "function", "function": {"name": piece, "arguments": ""}})
        } else {
            json!({"index": 0, "function": {"name": piece}})
        };
        out += &chunk(json!({ "tool_calls": [call] }), None);
    }
    let (a, b) = arguments.split_at(arguments.len() / 2);
    for piece in [a, b] {
        out += &chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
            None,
        );
    }
    out += &chunk(json!({}), Some(finish));
    out += "data: [DONE]\n\n";
    Reply::recorded(out)
}

/// The anthropic `tool_use` recording (a call to `get_weather`), ending
/// with `stop_reason`.
fn anthropic_call_ending(stop_reason: &str) -> Reply {
    let recorded = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/recorded/anthropic/tool_use.sse"),
    )
    .unwrap();
    let ending = format!("\"stop_reason\":\"{stop_reason}\"");
    let replaced = recorded.replace("\"stop_reason\":\"tool_use\"", &ending);
    assert!(replaced.contains(&ending));
    Reply::recorded(replaced)
}

#[tokio::test(start_paused = true)]
async fn complete_client_calls_end_with_tool_calls_whatever_the_provider_calls_its_reason() {
    // An OpenAI-compatible server's own word for the end of its turn.
    let reply = || openai_call("call_w", &["get_weather"], r#"{"city":"Oslo"}"#, "eos");
    let mock = MockProvider::start(Script::single(reply()).then(reply()).then(reply()))
        .await
        .unwrap();
    let server = serve(&mock, "openai", "").await;
    let body = format!(
        r#"{{"model":"chat","stream":true,"messages":[{{"role":"user","content":"Oslo?"}}],"tools":[{WEATHER_TOOL}]}}"#
    );
    let streamed = chunks(chat(server.addr, &body).await).await;
    assert_eq!(finish_reasons(&streamed), ["tool_calls"]);
    let answer = body_json(chat(server.addr, &body.replace(r#""stream":true,"#, "")).await).await;
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        answer["choices"][0]["message"]["tool_calls"][0]["function"],
        json!({"name": "get_weather", "arguments": r#"{"city":"Oslo"}"#})
    );
    let body = json!({"model": "chat", "max_tokens": 50, "messages": [{"role": "user", "content": "Oslo?"}],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]});
    let message =
        body_json(send(server.addr, post_json("/v1/messages", &body.to_string())).await).await;
    assert_eq!(message["stop_reason"], "tool_use", "{message}");
    assert_eq!(message["content"][0]["name"], "get_weather");
    server.stop().await;

    // A stop reason newer than Sluice, from an Anthropic provider.
    let mock = MockProvider::start(Script::single(anthropic_call_ending("a_newer_reason")))
        .await
        .unwrap();
    let server = serve(&mock, "anthropic", "").await;
    let body = format!(
        r#"{{"model":"chat","stream":true,"messages":[{{"role":"user","content":"Paris?"}}],"tools":[{WEATHER_TOOL}]}}"#
    );
    let streamed = chunks(chat(server.addr, &body).await).await;
    assert_eq!(finish_reasons(&streamed), ["tool_calls"]);
    assert_eq!(
        tool_call_pieces(&streamed)[0]["function"]["name"],
        "get_weather"
    );
    server.stop().await;
}

/// The client's tools of the split-name tests: `get_weather`, and
/// `lookup_`, a prefix of the pipeline's own `lookup_order`.
const LOOKUP_PREFIX_TOOL: &str =
    r#"{"type":"function","function":{"name":"lookup_","parameters":{"type":"object"}}}"#;

#[tokio::test(start_paused = true)]
async fn a_name_streamed_in_pieces_is_routed_on_the_whole_name() {
    // The pipeline's tool, named in two pieces (the first of which is
    // the client's tool): the pipeline runs it, and the model answers.
    let mock = MockProvider::start(
        Script::single(openai_call(
            "call_a",
            &["lookup_", "order"],
            r#"{"order_id": 1}"#,
            "tool_calls",
        ))
        .then(Reply::text(&["Shipped", "."]))
        .then(openai_call(
            "call_w",
            &["get_", "weather"],
            r#"{"city":"Oslo"}"#,
            "tool_calls",
        )),
    )
    .await
    .unwrap();
    let server = serve(&mock, "openai", LOOKUP_TOOL).await;
    let body = format!(
        r#"{{"model":"chat","stream":true,"messages":[{{"role":"user","content":"Order 1?"}}],"tools":[{WEATHER_TOOL},{LOOKUP_PREFIX_TOOL}]}}"#
    );
    let streamed = chunks(chat(server.addr, &body).await).await;
    assert!(tool_call_pieces(&streamed).is_empty(), "{streamed:#?}");
    assert_eq!(finish_reasons(&streamed), ["stop"]);
    let sent = mock.journal().requests();
    assert_eq!(sent.len(), 2);
    let turn = sent[1].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m.get("tool_calls").is_some())
        .unwrap();
    assert_eq!(
        turn["tool_calls"][0]["function"]["name"], "lookup_order",
        "{turn}"
    );

    // The client's tool, named in two pieces: relayed once, whole.
    let streamed = chunks(chat(server.addr, &body).await).await;
    let pieces = tool_call_pieces(&streamed);
    let named: Vec<&Value> = pieces
        .iter()
        .filter(|p| p["function"].get("name").is_some())
        .collect();
    assert_eq!(named.len(), 1, "{pieces:#?}");
    assert_eq!(named[0]["function"]["name"], "get_weather");
    assert_eq!(named[0]["id"], "call_w");
    let arguments: String = pieces
        .iter()
        .map(|p| p["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(arguments, r#"{"city":"Oslo"}"#);
    assert_eq!(finish_reasons(&streamed), ["tool_calls"]);
    assert_eq!(mock.journal().request_count(), 3);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_tool_name_past_256_bytes_is_a_malformed_upstream() {
    let long = "n".repeat(200);
    let mock = MockProvider::start(Script::single(openai_call(
        "call_x",
        &[&long, &long],
        "{}",
        "tool_calls",
    )))
    .await
    .unwrap();
    let server = serve(&mock, "openai", "").await;
    let body = r#"{"model":"chat","stream":true,"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#;
    let streamed = chunks(chat(server.addr, body).await).await;
    assert!(tool_call_pieces(&streamed).is_empty(), "{streamed:#?}");
    let error = streamed
        .iter()
        .find(|c| c.get("error").is_some())
        .unwrap_or_else(|| panic!("no error in {streamed:#?}"));
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than 256 bytes"),
        "{error}"
    );
    server.stop().await;
}
