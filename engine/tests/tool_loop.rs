//! The tool loop, black-box: the mock provider asks for tools over several
//! turns; Sluice validates the arguments, runs the declared queries on the
//! seeded shop database, streams `tool_call` / `tool_result` events, and
//! sends the results back. Paused clock, in-memory ledger.

mod common;

use std::path::PathBuf;

use common::*;
use sluice::compile::compile_sources;
use sluice::serve::RunningServer;
use sluice_testkit::{Fault, MockProvider, Reply, Script};

const TOOLS: &str = r#"tools:
  - name: lookup_order
    description: Look up one order by its id
    parameters:
      type: object
      properties: {order_id: {type: integer, minimum: 1}}
      required: [order_id]
      additionalProperties: false
    sql: {database: shop, query: "SELECT id, status, total_cents FROM orders WHERE id = :order_id", max_rows: 5}
  - name: orders_by_status
    description: Orders with one status
    parameters:
      type: object
      properties: {status: {type: string, maxLength: 20}}
      required: [status]
      additionalProperties: false
    sql: {database: shop, query: "SELECT id FROM orders WHERE status = :status ORDER BY id", max_rows: 3}
"#;

async fn start(
    mock: &MockProvider,
    kind: &str,
    db: &std::path::Path,
    seed: &std::path::Path,
    limits: &str,
) -> RunningServer {
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: memory\nproviders:\n  up: {{kind: {kind}, base_url: \"{}\"}}\ndatabases:\n  shop: {{path: \"{}\", seed: \"{}\"}}\n",
            mock.base_url(),
            db.display(),
            seed.display()
        ),
    );
    let pipeline = (
        PathBuf::from("support.yaml"),
        format!(
            "name: support\nmodel: {{provider: up, name: gpt-4o-mini}}\nsystem: Answer about orders.\nlimits: {{max_tokens: 200{limits}}}\ntimeouts: {{first_token: 5s, idle: 5s, total: 60s}}\n{TOOLS}"
        ),
    );
    let catalog = compile_sources(&settings, &[pipeline]).unwrap_or_else(|d| panic!("{d:#?}"));
    RunningServer::start(catalog, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn parallel_tool_calls_run_and_their_results_go_back_to_the_model() {
    let (db, seed) = shop_db();
    let mock = MockProvider::start(
        Script::single(openai_tool_calls(&[
            ("call_a", "lookup_order", r#"{"order_id": 7}"#),
            ("call_b", "orders_by_status", r#"{"status": "delivered"}"#),
        ]))
        .then(Reply::text(&["Order", " 7", " is", " delivered", "."])),
    )
    .await
    .unwrap();
    let server = start(&mock, "openai", &db, &seed, "").await;
    let events = SseReader::new(
        post_json_to(
            server.addr,
            "/v1/pipelines/support",
            r#"{"input":"Where is order 7?"}"#,
        )
        .await,
    )
    .collect()
    .await;
    assert_eq!(
        names(&events),
        [
            "start",
            "tool_call",
            "tool_call",
            "tool_result",
            "tool_result",
            "delta",
            "delta",
            "delta",
            "delta",
            "delta",
            "usage",
            "done"
        ]
    );
    let calls: Vec<_> = events.iter().filter(|e| e.name == "tool_call").collect();
    assert_eq!(
        calls[0].data["arguments"],
        serde_json::json!({"order_id": 7})
    );
    assert_eq!(calls[1].data["name"], "orders_by_status");
    let results: Vec<_> = events.iter().filter(|e| e.name == "tool_result").collect();
    assert_eq!(
        (
            results[0].data["ok"].clone(),
            results[0].data["rows"].clone()
        ),
        (true.into(), 1.into())
    );
    assert_eq!(
        results[1].data["truncated"], true,
        "max_rows 3 caps the delivered orders"
    );
    assert_eq!(text(&events), "Order 7 is delivered.");
    // Usage adds both rounds: 50 + 10 prompt, 20 + 5 completion.
    let usage = &find(&events, "usage").unwrap().data;
    assert_eq!(
        (
            usage["prompt_tokens"].as_u64(),
            usage["completion_tokens"].as_u64()
        ),
        (Some(60), Some(25))
    );

    // What the model got back, exactly.
    let second = &mock.journal().requests()[1].body;
    let msgs = second["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["role"], "system");
    assert_eq!(msgs[1]["role"], "user");
    assert_eq!(msgs[2]["role"], "assistant");
    assert_eq!(msgs[2]["tool_calls"][0]["id"], "call_a");
    assert_eq!(
        msgs[2]["tool_calls"][0]["function"]["arguments"],
        r#"{"order_id": 7}"#
    );
    assert_eq!(
        msgs[2]["tool_calls"][1]["function"]["name"],
        "orders_by_status"
    );
    assert_eq!(msgs[3]["role"], "tool");
    assert_eq!(msgs[3]["tool_call_id"], "call_a");
    let rows: serde_json::Value =
        serde_json::from_str(msgs[3]["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        rows["rows"][0],
        serde_json::json!({"id": 7, "status": "delivered", "total_cents": 7600})
    );
    assert_eq!(msgs[4]["tool_call_id"], "call_b");
    // Tools are advertised on every call.
    assert_eq!(second["tools"][0]["function"]["name"], "lookup_order");
    assert_eq!(
        mock.journal().requests()[0].body["tools"][1]["function"]["parameters"]["required"][0],
        "status"
    );
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn hostile_and_undeclared_calls_become_tool_errors_and_touch_nothing() {
    let (db, seed) = shop_db();
    let mock = MockProvider::start(
        Script::single(openai_tool_calls(&[
            ("h1", "lookup_order", r#"{"order_id": "1 OR 1=1"}"#),
            (
                "h2",
                "lookup_order",
                r#"{"order_id": "'; DROP TABLE orders; --"}"#,
            ),
            ("h3", "lookup_order", r#"{"order_id": 7, "admin": true}"#),
            ("h4", "lookup_order", r#"{"order_id": "#),
            ("h5", "drop_everything", r#"{}"#),
        ]))
        .then(Reply::text(&["Sorry", "."])),
    )
    .await
    .unwrap();
    let server = start(&mock, "openai", &db, &seed, "").await;
    // The database exists once the pipeline compiled (seeded at start).
    let before = std::fs::read(&db).unwrap();
    let events = SseReader::new(
        post_json_to(server.addr, "/v1/pipelines/support", r#"{"input":"hi"}"#).await,
    )
    .collect()
    .await;
    let results: Vec<_> = events.iter().filter(|e| e.name == "tool_result").collect();
    assert_eq!(results.len(), 5);
    for r in &results {
        assert_eq!(r.data["ok"], false, "{}", r.data);
        assert_eq!(r.data["rows"], 0);
    }
    assert!(
        results[0].data["error"]
            .as_str()
            .unwrap()
            .contains("is not of type \"integer\"")
    );
    assert!(
        results[2].data["error"]
            .as_str()
            .unwrap()
            .contains("Additional properties")
    );
    assert!(
        results[3].data["error"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
    assert!(
        results[4].data["error"]
            .as_str()
            .unwrap()
            .contains("no tool named \"drop_everything\"")
    );
    // The model was told each error, so it can correct itself.
    let msgs = mock.journal().requests()[1].body["messages"]
        .as_array()
        .unwrap()
        .clone();
    let tool_msgs: Vec<_> = msgs.iter().filter(|m| m["role"] == "tool").collect();
    assert_eq!(tool_msgs.len(), 5);
    assert!(tool_msgs[1]["content"].as_str().unwrap().contains("error"));
    assert_eq!(text(&events), "Sorry.");
    server.stop().await;
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the database file changed"
    );
}

#[tokio::test(start_paused = true)]
async fn the_loop_stops_at_max_tool_rounds() {
    let (db, seed) = shop_db();
    let ask = openai_tool_calls(&[("c", "lookup_order", r#"{"order_id": 1}"#)]);
    let mock = MockProvider::start(Script::single(ask)).await.unwrap();
    let server = start(&mock, "openai", &db, &seed, ", max_tool_rounds: 2").await;
    let events = SseReader::new(
        post_json_to(server.addr, "/v1/pipelines/support", r#"{"input":"loop"}"#).await,
    )
    .collect()
    .await;
    assert_eq!(events.iter().filter(|e| e.name == "tool_result").count(), 2);
    assert_eq!(
        find(&events, "done").unwrap().data["finish_reason"],
        "tool_limit"
    );
    assert_eq!(
        mock.journal().request_count(),
        3,
        "two rounds of tools, then the third ask is refused"
    );
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn max_total_tokens_bounds_all_rounds_together() {
    let (db, seed) = shop_db();
    let ask = openai_tool_calls(&[("c", "lookup_order", r#"{"order_id": 1}"#)]);
    let mock = MockProvider::start(Script::single(ask)).await.unwrap();
    // Each round reports 70 tokens; 200 allow two rounds, not three.
    let server = start(
        &mock,
        "openai",
        &db,
        &seed,
        ", max_tool_rounds: 10, max_total_tokens: 200",
    )
    .await;
    let events = SseReader::new(
        post_json_to(server.addr, "/v1/pipelines/support", r#"{"input":"loop"}"#).await,
    )
    .collect()
    .await;
    assert_eq!(
        find(&events, "error").unwrap().data["code"],
        "token_ceiling"
    );
    assert_eq!(
        find(&events, "done").unwrap().data["finish_reason"],
        "length"
    );
    let sent: Vec<u64> = mock
        .journal()
        .requests()
        .iter()
        .map(|r| r.body["max_tokens"].as_u64().unwrap())
        .collect();
    assert!(sent.len() <= 3 && sent.iter().all(|m| *m < 200), "{sent:?}");
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn deadlines_cover_the_rounds_after_a_tool() {
    let (db, seed) = shop_db();
    let mock = MockProvider::start(
        Script::single(openai_tool_calls(&[(
            "c",
            "lookup_order",
            r#"{"order_id": 2}"#,
        )]))
        .then(Reply::text(&["a", " b"]).fault(Fault::StallAfter {
            events: 2,
            duration: None,
        })),
    )
    .await
    .unwrap();
    let server = start(&mock, "openai", &db, &seed, "").await;
    let t0 = tokio::time::Instant::now();
    let events = SseReader::new(
        post_json_to(server.addr, "/v1/pipelines/support", r#"{"input":"hi"}"#).await,
    )
    .collect()
    .await;
    assert_eq!(find(&events, "error").unwrap().data["code"], "timeout.idle");
    let closed = mock
        .journal()
        .wait_closed(1, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert!(closed.duration_since(t0) <= std::time::Duration::from_millis(5100));
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_same_pipeline_runs_its_tools_through_anthropic() {
    let (db, seed) = shop_db();
    // Anthropic's recorded tool_use turn asks get_weather {"location": "Paris"}:
    // declare that tool on the shop database, then answer with text.
    let mock = MockProvider::start(
        Script::single(Reply::fixture("anthropic/tool_use.sse"))
            .then(Reply::anthropic_text(&["Sunny", "."])),
    )
    .await
    .unwrap();
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: memory\nproviders:\n  up: {{kind: anthropic, base_url: \"{}\"}}\ndatabases:\n  shop: {{path: \"{}\", seed: \"{}\"}}\n",
            mock.base_url(),
            db.display(),
            seed.display()
        ),
    );
    let pipeline = (
        PathBuf::from("weather.yaml"),
        "name: weather\nmodel: {provider: up, name: claude-sonnet-4}\nlimits: {max_tokens: 200}\ntools:\n  - name: get_weather\n    description: Customers in a city\n    parameters: {type: object, properties: {location: {type: string}}, required: [location]}\n    sql: {database: shop, query: \"SELECT name FROM customers WHERE city = :location\"}\n".to_string(),
    );
    let catalog = compile_sources(&settings, &[pipeline]).unwrap_or_else(|d| panic!("{d:#?}"));
    let server = RunningServer::start(catalog, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let events = SseReader::new(
        post_json_to(
            server.addr,
            "/v1/pipelines/weather",
            r#"{"input":"Weather in Paris?"}"#,
        )
        .await,
    )
    .collect()
    .await;
    let call = &find(&events, "tool_call").unwrap().data;
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["id"], "toolu_01NRLabsLyVHZPKxbKvkfSMn");
    assert_eq!(call["arguments"], serde_json::json!({"location": "Paris"}));
    assert_eq!(find(&events, "tool_result").unwrap().data["ok"], true);
    assert!(text(&events).ends_with("Sunny."));
    // Anthropic's shape: tool_use in the assistant turn, tool_result in a user turn.
    let second = &mock.journal().requests()[1].body;
    let msgs = second["messages"].as_array().unwrap();
    let assistant = &msgs[1];
    assert_eq!(assistant["role"], "assistant");
    let tool_use = assistant["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .unwrap();
    assert_eq!(tool_use["input"], serde_json::json!({"location": "Paris"}));
    assert_eq!(msgs[2]["role"], "user");
    assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
    assert_eq!(
        msgs[2]["content"][0]["tool_use_id"],
        "toolu_01NRLabsLyVHZPKxbKvkfSMn"
    );
    assert_eq!(
        second["tools"][0]["input_schema"]["required"][0],
        "location"
    );
    server.stop().await;
}

async fn post_json_to(
    addr: std::net::SocketAddr,
    path: &str,
    body: &str,
) -> http::Response<hyper::body::Incoming> {
    send(addr, post_json(path, body)).await
}
