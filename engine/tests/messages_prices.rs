//! `/v1/messages` and Anthropic's prompt cache: breakpoints reach an
//! Anthropic provider where the client put them (and are refused for an
//! OpenAI one, naming the first), and what they cost: one-hour writes (`ttl: "1h"`) priced at `cache_write_1h`, from the
//! split the provider reports (or as hour-long when it does not split
//! them), recorded in the ledger and reserved at the hour's price; a
//! lifetime Anthropic does not price is refused. Paused clock, in-memory
//! ledger, the testkit's mock provider.

mod common;

use common::*;
use serde_json::{Value, json};
use sluice_testkit::{MockProvider, Reply, Script};

/// An Anthropic stream of one text block whose usage reports `usage`.
fn cached_answer(usage: Value) -> Reply {
    anthropic_reply(
        &[(
            json!({"type": "text", "text": ""}),
            vec![json!({"type": "text_delta", "text": "Hi"})],
        )],
        "end_turn",
        usage,
    )
}

/// A long system prompt with a breakpoint of `ttl` (none: 5 minutes).
fn long_cached(ttl: Option<&str>) -> Value {
    let mut cc = json!({"type": "ephemeral"});
    if let Some(t) = ttl {
        cc["ttl"] = json!(t);
    }
    json!({"model": "chat", "max_tokens": 200,
        "system": [{"type": "text", "text": "the same long context ".repeat(2_500), "cache_control": cc}],
        "messages": [{"role": "user", "content": "hi"}]})
}

/// Anthropic bills a one-hour cache write at 2 × input (5 minutes:
/// 1.25 ×): the split its usage reports is priced, recorded and shown,
/// writes it does not split are billed as hour-long when the request asked
/// for the hour, and the reservation assumes the hour's price.
#[tokio::test(start_paused = true)]
async fn one_hour_cache_writes_are_priced_as_such() {
    // 1,000 plain, 9,000 written (3,000 for 5 minutes, 6,000 for an hour).
    let split = json!({"input_tokens": 1000, "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 9000,
        "cache_creation": {"ephemeral_5m_input_tokens": 3000, "ephemeral_1h_input_tokens": 6000},
        "output_tokens": 100});
    let unsplit = json!({"input_tokens": 1000, "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 9000, "output_tokens": 100});
    let mock = MockProvider::start(
        Script::single(cached_answer(split))
            .then(cached_answer(unsplit.clone()))
            .then(cached_answer(unsplit)),
    )
    .await
    .unwrap();
    // No cache_write_1h: twice the input price ($6), Anthropic's.
    let server = serve_chat(
        &mock,
        "anthropic",
        "prices:\n  the-model: {input: 3, output: 15, cached_input: 0.3, cache_write: 3.75}\n",
        "limits: {max_tokens: 200}\nbudget: {daily_usd: 10}\n",
    )
    .await;
    let answer = body_json(post_messages(server.addr, &long_cached(Some("1h"))).await).await;
    assert_eq!(
        answer["usage"]["cache_creation"],
        json!({"ephemeral_5m_input_tokens": 3000, "ephemeral_1h_input_tokens": 6000}),
        "{answer}"
    );
    assert_eq!(answer["usage"]["cache_creation_input_tokens"], 9000);
    // Not split by the provider: every write may have been for an hour.
    body_json(post_messages(server.addr, &long_cached(Some("1h"))).await).await;
    // Without a one-hour breakpoint, unsplit writes are 5-minute ones.
    body_json(post_messages(server.addr, &long_cached(Some("5m"))).await).await;
    let rows = server.ledger().rows_since(0).await.unwrap();
    let row = |i: usize| &rows[i];
    assert_eq!(
        (row(0).cache_write_tokens, row(0).cache_write_1h_tokens),
        (9000, 6000)
    );
    // 1,000 × $3 + 3,000 × $3.75 + 6,000 × $6 + 100 × $15, per million.
    assert_eq!(row(0).cost_micros, 3_000 + 11_250 + 36_000 + 1_500);
    assert_eq!(row(1).cache_write_1h_tokens, 9000);
    assert_eq!(row(1).cost_micros, 3_000 + 54_000 + 1_500);
    assert_eq!(row(2).cache_write_1h_tokens, 0);
    assert_eq!(row(2).cost_micros, 3_000 + 33_750 + 1_500);
    // The reservation prices every prompt token at the hour's write price
    // when the request holds a one-hour breakpoint.
    let price = sluice::ledger::Price {
        input_per_m: 3_000_000,
        output_per_m: 15_000_000,
        cached_input_per_m: 300_000,
        cache_write_per_m: 3_750_000,
        cache_write_1h_per_m: 6_000_000,
    };
    let prompt = [
        sluice::provider::Message::new(
            sluice::provider::Role::System,
            "the same long context ".repeat(2_500),
        ),
        sluice::provider::Message::new(sluice::provider::Role::User, "hi"),
    ];
    let counted = sluice::tokens::count_prompt(&prompt);
    let reserve = |one_hour| sluice::budget::reservation(&price, counted, 200, 1, one_hour);
    assert_eq!(row(0).reserved_micros, reserve(true));
    assert_eq!(row(2).reserved_micros, reserve(false));
    assert!(reserve(true) > reserve(false));
    for i in 0..3 {
        assert!(row(i).cost_micros <= row(i).reserved_micros, "row {i}");
    }
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_cache_lifetime_anthropic_does_not_price_is_refused() {
    let mock = MockProvider::start(Script::single(Reply::anthropic_text(&["x"])))
        .await
        .unwrap();
    let server = serve_chat(&mock, "anthropic", "", "limits: {max_tokens: 200}\n").await;
    let e = anthropic_error_of(
        post_messages(server.addr, &long_cached(Some("2h"))).await,
        400,
    )
    .await;
    assert_eq!(e["type"], "invalid_request_error");
    assert_eq!(
        e["message"],
        "system[0].cache_control.ttl: must be \"5m\" or \"1h\""
    );
    assert_eq!(mock.journal().request_count(), 0);
    server.stop().await;
}

/// A pipeline whose tool rounds are bounded by max_total_tokens reserves
/// that bound at the dearest a token may cost: as a cache write (for an
/// hour, when the request asks for one), not only as input or output.
#[tokio::test(start_paused = true)]
async fn a_tool_loop_reserves_its_token_budget_at_the_dearest_write() {
    let mock = MockProvider::start(Script::single(Reply::anthropic_text(&["x"])))
        .await
        .unwrap();
    let server = serve_chat(
        &mock,
        "anthropic",
        "prices:\n  the-model: {input: 1, output: 1, cache_write: 1.25}\n",
        &format!(
            "limits: {{max_tokens: 200, max_total_tokens: 1000}}\nbudget: {{daily_usd: 10}}\n{LOOKUP_TOOL}"
        ),
    )
    .await;
    let ask = |ttl: Option<&str>| {
        let mut cc = json!({"type": "ephemeral"});
        if let Some(t) = ttl {
            cc["ttl"] = json!(t);
        }
        json!({"model": "chat", "max_tokens": 100,
            "system": [{"type": "text", "text": "Be brief.", "cache_control": cc}],
            "messages": [{"role": "user", "content": "hi"}]})
    };
    body_json(post_messages(server.addr, &ask(None)).await).await;
    body_json(post_messages(server.addr, &ask(Some("1h"))).await).await;
    let rows = server.ledger().rows_since(0).await.unwrap();
    // The bound: completion_guard(1,000) = 1,564 tokens.
    let bound = sluice::tokens::completion_guard(1000) as i64;
    assert_eq!(rows[0].reserved_micros, (bound * 125 + 99) / 100);
    // No cache_write_1h: twice the input price.
    assert_eq!(rows[1].reserved_micros, bound * 2);
    server.stop().await;
}

/// A conversation with a cache breakpoint on every kind of block that
/// takes one.
fn cached() -> Value {
    json!({"model": "chat", "max_tokens": 20,
        "system": [{"type": "text", "text": "Long instructions."},
                   {"type": "text", "text": "More.", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"},
                   "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Weather?"},
                {"type": "text", "text": "In Paris.", "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {},
                 "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Checking."}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny",
                 "cache_control": {"type": "ephemeral"}}]}]})
}

#[tokio::test(start_paused = true)]
async fn cache_control_reaches_an_anthropic_provider_and_is_refused_for_openai() {
    let mock = MockProvider::start(Script::single(Reply::anthropic_text(&["Sunny"])))
        .await
        .unwrap();
    let server = serve_chat(&mock, "anthropic", "", "limits: {max_tokens: 200}\n").await;
    let resp = post_messages(server.addr, &cached()).await;
    assert_eq!(resp.status(), 200);
    let sent = &mock.journal().requests()[0].body;
    let eph = json!({"type": "ephemeral"});
    assert_eq!(
        sent["system"],
        json!([{"type": "text", "text": "Long instructions."},
               {"type": "text", "text": "More.", "cache_control": eph}])
    );
    assert_eq!(
        sent["tools"][0]["cache_control"],
        json!({"type": "ephemeral", "ttl": "1h"})
    );
    let msgs = &sent["messages"];
    assert_eq!(
        msgs[0]["content"],
        json!([{"type": "text", "text": "Weather?"},
               {"type": "text", "text": "In Paris.", "cache_control": eph}])
    );
    // The text goes before the call (Sluice's order); the mark stays on the call.
    assert_eq!(
        msgs[1]["content"][0],
        json!({"type": "text", "text": "Checking."})
    );
    assert_eq!(msgs[1]["content"][1]["cache_control"], eph);
    assert_eq!(msgs[2]["content"][0]["cache_control"], eph);
    server.stop().await;

    let mock = MockProvider::start(Script::single(Reply::text(&["x"])))
        .await
        .unwrap();
    let server = serve_chat(&mock, "openai", "", "limits: {max_tokens: 200}\n").await;
    let e = anthropic_error_of(post_messages(server.addr, &cached()).await, 400).await;
    // The first breakpoint, where the client put it.
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("tools[0].cache_control:"),
        "{e}"
    );
    assert_eq!(mock.journal().request_count(), 0);
    server.stop().await;
}
