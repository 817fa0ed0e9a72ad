//! `/v1/chat/completions` with several choices (`n`) and with logprobs,
//! black-box through the mock OpenAI provider: every choice streamed with
//! its own index and finish reason, usage counted once for all, the
//! reservation covering every choice, the ceiling holding over all of
//! them, and logprobs relayed as the provider sent them.

mod common;

use std::time::Duration;

use common::chat::chunks;
use common::*;
use serde_json::{Value, json};
use sluice::ledger::Price;
use sluice::provider::{Message, Role};
use sluice::serve::RunningServer;
use sluice_testkit::{MockProvider, Reply, Script};

const MAX_TOKENS: u32 = 50;

const PRICE: Price = Price {
    input_per_m: 1_000_000,
    output_per_m: 2_000_000,
    cached_input_per_m: 1_000_000,
    cache_write_per_m: 1_000_000,
    cache_write_1h_per_m: 2_000_000,
};

/// A server with one pipeline `chat` (max_tokens 50, priced, with a
/// budget so that its reservation is recorded) on a provider of `kind`.
async fn serve(mock: &MockProvider, kind: &str) -> RunningServer {
    serve_with(mock, kind, "", "").await
}

/// [`serve`], with `limits` added to the pipeline's limits and `extra`
/// appended to it (clients rules, tools on the `shop` database).
async fn serve_with(mock: &MockProvider, kind: &str, limits: &str, extra: &str) -> RunningServer {
    let prices = "prices:\n  the-model: {input: 1.0, output: 2.0}\n";
    let rest = format!(
        "limits: {{max_tokens: {MAX_TOKENS}{limits}}}\nbudget: {{daily_usd: 100}}\n{extra}"
    );
    serve_chat(mock, kind, prices, &rest).await
}

async fn chat(addr: std::net::SocketAddr, body: &Value) -> http::Response<hyper::body::Incoming> {
    common::chat::chat(addr, &body.to_string()).await
}

fn sse(lines: &[String]) -> String {
    lines.iter().map(|l| format!("data: {l}\n\n")).collect()
}

fn piece(index: u32, delta: Value, finish: Option<&str>) -> String {
    json!({"id": "c", "object": "chat.completion.chunk", "model": "the-model-2024",
           "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": null}]})
    .to_string()
}

/// Three choices interleaved as OpenAI streams them, one cut by length.
fn three_choices() -> Reply {
    let mut lines = Vec::new();
    for i in 0..3 {
        lines.push(piece(i, json!({"role": "assistant", "content": ""}), None));
    }
    for (i, t) in [
        (0, "Red"),
        (1, "Blue"),
        (2, "Green"),
        (0, " apple"),
        (2, " leaf"),
        (1, " sky"),
    ] {
        lines.push(piece(i, json!({"content": t}), None));
    }
    lines.push(piece(1, json!({}), Some("stop")));
    lines.push(piece(2, json!({"content": "!"}), None));
    lines.push(piece(0, json!({}), Some("stop")));
    lines.push(piece(2, json!({}), Some("length")));
    lines.push(
        json!({"id": "c", "object": "chat.completion.chunk", "model": "the-model-2024", "choices": [],
               "usage": {"prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20}})
        .to_string(),
    );
    lines.push("[DONE]".into());
    Reply::recorded(sse(&lines))
}

fn ask_n(n: u32, stream: bool) -> Value {
    json!({"model": "chat", "n": n, "stream": stream, "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
           "messages": [{"role": "user", "content": "Name a colour and a thing"}]})
}

/// What Sluice reserves for `n` choices of `ask_n`'s prompt.
fn reservation(n: u32) -> i64 {
    let prompt = [Message::new(Role::User, "Name a colour and a thing")];
    sluice::budget::reservation(
        &PRICE,
        sluice::tokens::count_prompt(&prompt),
        MAX_TOKENS,
        n,
        false,
    )
}

/// The request's ledger row, once settled.
async fn settled_row(server: &RunningServer) -> sluice::ledger::report::Row {
    for _ in 0..100 {
        let rows = server.ledger().rows_since(0).await.unwrap();
        assert_eq!(rows.len(), 1, "{rows:#?}");
        if rows[0].ended_at_ms.is_some() {
            return rows.into_iter().next().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the row was never settled");
}

/// Per choice index: its text and its finish reasons, from a stream.
fn by_choice(chunks: &[Value]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for c in chunks {
        for choice in c["choices"].as_array().into_iter().flatten() {
            let i = choice["index"].as_u64().unwrap() as usize;
            if out.len() <= i {
                out.resize_with(i + 1, Default::default);
            }
            if let Some(t) = choice["delta"]["content"].as_str() {
                out[i].0.push_str(t);
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                out[i].1.push(f.to_string());
            }
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn three_choices_stream_with_their_own_index_finish_and_one_usage() {
    let mock = MockProvider::start(Script::single(three_choices()))
        .await
        .unwrap();
    let server = serve(&mock, "openai").await;
    let chunks = chunks(chat(server.addr, &ask_n(3, true)).await).await;
    let choices = by_choice(&chunks);
    assert_eq!(
        choices,
        [
            ("Red apple".to_string(), vec!["stop".to_string()]),
            ("Blue sky".to_string(), vec!["stop".to_string()]),
            ("Green leaf!".to_string(), vec!["length".to_string()]),
        ],
        "{chunks:#?}"
    );
    // Every choice opens with its role.
    let roles: Vec<u64> = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["role"] == "assistant")
        .map(|c| c["choices"][0]["index"].as_u64().unwrap())
        .collect();
    assert_eq!(roles, [0, 1, 2]);
    // Usage once, for all choices, as the provider counted it.
    let usages: Vec<&Value> = chunks
        .iter()
        .filter(|c| !c["usage"].is_null() && c.get("usage").is_some())
        .map(|c| &c["usage"])
        .collect();
    assert_eq!(usages.len(), 1, "{chunks:#?}");
    assert_eq!(usages[0]["completion_tokens"], 9);
    assert_eq!(usages[0]["prompt_tokens"], 11);
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    // The provider was asked for three.
    let sent = mock.journal().request(0).unwrap();
    assert_eq!(sent.body_at("n"), Some(&json!(3)));
    // The ledger: the provider's count for all choices, and a reservation
    // that covered three completions.
    let row = settled_row(&server).await;
    assert_eq!(row.status, "ok");
    assert_eq!((row.prompt_tokens, row.completion_tokens), (11, 9));
    assert!(!row.estimated);
    assert_eq!(row.reserved_micros, reservation(3));
    assert!(reservation(3) > reservation(1));
    assert_eq!(row.cost_micros, 11 + 9 * 2);
}

#[tokio::test(start_paused = true)]
async fn three_choices_come_back_whole_without_streaming() {
    let mock = MockProvider::start(Script::single(three_choices()))
        .await
        .unwrap();
    let server = serve(&mock, "openai").await;
    let resp = chat(server.addr, &ask_n(3, false)).await;
    assert_eq!(resp.status(), 200);
    let body = body_json(resp).await;
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3, "{body:#}");
    let got: Vec<(u64, &str, &str)> = choices
        .iter()
        .map(|c| {
            (
                c["index"].as_u64().unwrap(),
                c["message"]["content"].as_str().unwrap(),
                c["finish_reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (0, "Red apple", "stop"),
            (1, "Blue sky", "stop"),
            (2, "Green leaf!", "length")
        ]
    );
    assert!(choices.iter().all(|c| c["logprobs"].is_null()));
    assert_eq!(body["usage"]["completion_tokens"], 9);
    assert_eq!(body["usage"]["total_tokens"], 20);
    assert_eq!(settled_row(&server).await.completion_tokens, 9);
}

#[tokio::test(start_paused = true)]
async fn several_choices_are_refused_where_they_cannot_be_had() {
    let mock = MockProvider::start(Script::single(Reply::anthropic_text(&["hi"])))
        .await
        .unwrap();
    // Anthropic's Messages API has no n.
    let server = serve(&mock, "anthropic").await;
    let resp = chat(server.addr, &ask_n(2, false)).await;
    assert_eq!(resp.status(), 400);
    let body = body_json(resp).await;
    assert_eq!(body["error"]["param"], "n");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("pipeline \"chat\"") && message.contains("Anthropic"),
        "{message}"
    );
    // n = 1 is fine there.
    let resp = chat(server.addr, &ask_n(1, false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.journal().request_count(), 1);

    // Several choices with tools: a tool loop per choice is not run.
    let mock = MockProvider::start(Script::single(three_choices()))
        .await
        .unwrap();
    let server = serve(&mock, "openai").await;
    let mut body = ask_n(2, false);
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let resp = chat(server.addr, &body).await;
    assert_eq!(resp.status(), 400);
    let body = body_json(resp).await;
    assert_eq!(body["error"]["param"], "n");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("tools"),
        "{body}"
    );
    assert_eq!(mock.journal().request_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn several_choices_are_refused_on_a_pipeline_with_its_own_tools() {
    let mock = MockProvider::start(Script::single(three_choices()))
        .await
        .unwrap();
    let tools = "tools:\n  - name: lookup_order\n    description: Look up one order by its id\n    parameters: {type: object, properties: {order_id: {type: integer}}, required: [order_id]}\n    sql: {database: shop, query: \"SELECT id, status FROM orders WHERE id = :order_id\"}\n";
    let server = serve_with(&mock, "openai", ", max_total_tokens: 400", tools).await;
    for stream in [false, true] {
        let resp = chat(server.addr, &ask_n(2, stream)).await;
        assert_eq!(resp.status(), 400);
        let body = body_json(resp).await;
        assert_eq!(body["error"]["param"], "n");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("pipeline \"chat\" has tools"), "{message}");
    }
    assert_eq!(mock.journal().request_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_pipeline_can_cap_how_many_choices_its_clients_ask_for() {
    let mock = MockProvider::start(Script::single(three_choices()))
        .await
        .unwrap();
    let server = serve_with(&mock, "openai", "", "clients: {bounds: {n: {max: 2}}}\n").await;
    let resp = chat(server.addr, &ask_n(3, false)).await;
    assert_eq!(resp.status(), 400);
    let body = body_json(resp).await;
    assert_eq!(body["error"]["param"], "n");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("pipeline \"chat\"") && message.contains("from 1 to 2"),
        "{message}"
    );
    assert_eq!(mock.journal().request_count(), 0);

    // Two is within the cap (the mock's recording happens to carry three).
    let resp = chat(server.addr, &ask_n(2, false)).await;
    assert_eq!(resp.status(), 200);
    let _ = body_json(resp).await;
    assert_eq!(mock.journal().requests()[0].body["n"], 2);
}

#[tokio::test(start_paused = true)]
async fn a_flood_on_the_second_choice_is_cut_at_the_ceiling_of_all_choices() {
    // Choice 0 answers; choice 1 never stops.
    let mut lines = vec![
        piece(0, json!({"content": "Fine."}), None),
        piece(0, json!({}), Some("stop")),
    ];
    for _ in 0..2000 {
        lines.push(piece(1, json!({"content": " word"}), None));
    }
    lines.push(piece(1, json!({}), Some("stop")));
    lines.push("[DONE]".into());
    let mock = MockProvider::start(Script::single(Reply::recorded(sse(&lines))))
        .await
        .unwrap();
    let server = serve(&mock, "openai").await;
    let chunks = chunks(chat(server.addr, &ask_n(2, true)).await).await;
    let choices = by_choice(&chunks);
    assert_eq!(choices[0], ("Fine.".to_string(), vec!["stop".to_string()]));
    // Cut: the guard of 2 × 50 tokens (plus its margin), not the 2000 words.
    let words = choices[1].0.matches(" word").count() as u64;
    let guard = sluice::tokens::completion_guard(2 * u64::from(MAX_TOKENS));
    assert!(words > 100 && words <= guard, "{words} words");
    assert_eq!(choices[1].1, ["length"]);
    let row = settled_row(&server).await;
    assert_eq!(row.status, "ceiling");
    assert_eq!(row.error_code.as_deref(), Some("token_ceiling"));
}

#[tokio::test(start_paused = true)]
async fn logprobs_are_relayed_streamed_and_not() {
    // A recording of gpt-4o refusing, asked with logprobs: true.
    let mock = MockProvider::start(
        Script::single(Reply::fixture("openai/refusal.sse"))
            .then(Reply::fixture("openai/refusal.sse")),
    )
    .await
    .unwrap();
    let server = serve(&mock, "openai").await;
    let ask = |stream: bool| {
        json!({"model": "chat", "stream": stream, "logprobs": true, "top_logprobs": 0,
               "messages": [{"role": "user", "content": "How do I pick a lock?"}]})
    };
    let chunks = chunks(chat(server.addr, &ask(true)).await).await;
    let sent = mock.journal().request(0).unwrap();
    assert_eq!(sent.body_at("logprobs"), Some(&json!(true)));
    assert_eq!(sent.body_at("top_logprobs"), Some(&json!(0)));
    let mut refusal = String::new();
    let mut described = String::new();
    for c in &chunks {
        let choice = &c["choices"][0];
        if let Some(t) = choice["delta"]["refusal"].as_str() {
            refusal.push_str(t);
            // Each piece comes with its own tokens' logprobs.
            let tokens: String = choice["logprobs"]["refusal"]
                .as_array()
                .unwrap_or_else(|| panic!("no logprobs with {c}"))
                .iter()
                .map(|t| t["token"].as_str().unwrap())
                .collect();
            assert_eq!(tokens, t);
            assert!(choice["logprobs"]["refusal"][0]["logprob"].is_f64());
            described.push_str(&tokens);
        }
    }
    assert!(refusal.starts_with("I'm sorry"), "{refusal}");
    assert_eq!(described, refusal);

    let resp = chat(server.addr, &ask(false)).await;
    assert_eq!(resp.status(), 200);
    let body = body_json(resp).await;
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["refusal"], json!(refusal));
    assert_eq!(choice["logprobs"]["content"], Value::Null);
    let entries = choice["logprobs"]["refusal"].as_array().unwrap();
    let tokens: String = entries
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(tokens, refusal);
    assert!(entries.iter().all(|e| e["bytes"].is_array()));
}
