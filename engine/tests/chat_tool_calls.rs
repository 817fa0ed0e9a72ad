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
    let tool = SQL_TOOL
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
    let server = serve(&mock, "openai", SQL_TOOL).await;
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
    let server = serve(&mock, "openai", SQL_TOOL).await;
    let body = r#"{"model":"chat","messages":[{"role":"user","content":"Order 1?"}],"tool_choice":"required"}"#;
    let answer = body_json(chat(server.addr, body).await).await;
    assert_eq!(answer["choices"][0]["message"]["content"], "Shipped.");
    let sent = mock.journal().requests();
    assert_eq!(sent[0].body["tool_choice"], "required");
    // Kept, it would make the model call a tool every round.
    assert_eq!(sent[1].body["tool_choice"], "auto");
    server.stop().await;
}
