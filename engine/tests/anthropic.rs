//! Black-box tests of the `anthropic` provider: a real Sluice server in front
//! of the testkit's mock speaking the Anthropic Messages wire, read as an
//! SSE client, on tokio's paused clock.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;

use common::*;
use http::StatusCode;
use sluice::compile::{Catalog, compile_sources};
use sluice::serve::RunningServer;
use sluice_testkit::{Fault, MockProvider, Reply, Script};
use tokio::time::Instant;

const WORDS: &[&str] = &["Hello", " there", ",", " how", " are", " you", "?"];
const KEY_VAR: &str = "SLUICE_TEST_ANTHROPIC_KEY";
const KEY: &str = "sk-ant-test-0123456789";

/// Sets the API key variable once, before any catalog reads it.
fn set_key() {
    static ONCE: Once = Once::new();
    // SAFETY: only this test binary's threads exist, and none of them reads
    // the environment through libc while the value is written (Rust's own
    // `env::var` takes the same lock as `set_var`).
    ONCE.call_once(|| unsafe { std::env::set_var(KEY_VAR, KEY) });
}

/// Settings declaring an OpenAI-compatible `oai` and an Anthropic `claude`.
fn settings(oai_url: &str, claude_url: &str) -> (PathBuf, String) {
    (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: memory\n\
             server: {{keepalive: 15s, shutdown_grace: 2s}}\n\
             providers:\n  \
               oai:\n    kind: openai\n    base_url: {oai_url}\n  \
               claude:\n    kind: anthropic\n    base_url: {claude_url}\n    api_key_env: {KEY_VAR}\n"
        ),
    )
}

/// The `chat` pipeline; switching provider is the one line `provider: ...`.
fn pipeline_yaml(max_tokens: u32, timeouts: &str) -> String {
    format!(
        "name: chat\n\
         model:\n  provider: claude\n  name: claude-sonnet-4-20250514\n  temperature: 0.2\n\
         system: Be brief.\n\
         limits: {{max_tokens: {max_tokens}}}\n\
         timeouts: {timeouts}\n"
    )
}

fn compile(settings: &(PathBuf, String), pipeline: &str) -> Catalog {
    set_key();
    match compile_sources(
        settings,
        &[(PathBuf::from("chat.yaml"), pipeline.to_string())],
    ) {
        Ok(c) => c,
        Err(d) => panic!("test configuration does not compile: {d:?}"),
    }
}

async fn serve(catalog: Catalog) -> RunningServer {
    RunningServer::start(catalog, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("server starts")
}

/// A server whose `chat` pipeline calls the mock through `kind: anthropic`.
async fn start(script: Script, max_tokens: u32, timeouts: &str) -> Harness {
    let mock = MockProvider::start(script).await.expect("mock starts");
    let url = mock.base_url();
    let catalog = compile(&settings(&url, &url), &pipeline_yaml(max_tokens, timeouts));
    Harness {
        mock,
        server: serve(catalog).await,
    }
}

/// How long after `from` the mock saw Sluice close request `i`'s connection.
async fn closed_after(h: &Harness, i: usize, from: Instant) -> Duration {
    let closed = h
        .mock
        .journal()
        .wait_closed(i, Duration::from_secs(3600))
        .await
        .expect("sluice closed the upstream connection");
    closed.duration_since(from)
}

#[tokio::test(start_paused = true)]
async fn a_text_stream_arrives_as_start_deltas_usage_done() {
    let h = start(Script::single(Reply::anthropic_text(WORDS)), 256, TIMEOUTS).await;
    let resp = post(h.addr(), r#"{"input":"hi"}"#).await;
    let events = SseReader::new(resp).collect().await;
    let mut expected = vec!["start"];
    expected.extend(std::iter::repeat_n("delta", WORDS.len()));
    expected.extend(["usage", "done"]);
    assert_eq!(names(&events), expected);
    assert_eq!(text(&events), "Hello there, how are you?");
    let start = &find(&events, "start").unwrap().data;
    assert_eq!(start["provider"], "claude");
    // The model as the provider names it (the mock calls itself so).
    assert_eq!(start["model"], "mock-claude");
    let usage = &find(&events, "usage").unwrap().data;
    assert_eq!(usage["prompt_tokens"], 10);
    assert_eq!(usage["completion_tokens"], WORDS.len());
    assert_eq!(usage["total_tokens"], 10 + WORDS.len());
    assert_eq!(usage["estimated"], false);
    assert_eq!(find(&events, "done").unwrap().data["finish_reason"], "stop");
}

#[tokio::test(start_paused = true)]
async fn a_recorded_claude_stream_plays_through_the_provider() {
    let h = start(
        Script::single(Reply::fixture("anthropic/text.sse")),
        256,
        TIMEOUTS,
    )
    .await;
    let events = SseReader::new(post(h.addr(), r#"{"input":"hi"}"#).await)
        .collect()
        .await;
    assert_eq!(text(&events), "Hello there!");
    let usage = &find(&events, "usage").unwrap().data;
    assert_eq!(
        (&usage["prompt_tokens"], &usage["completion_tokens"]),
        (&11.into(), &6.into())
    );
    assert_eq!(find(&events, "done").unwrap().data["finish_reason"], "stop");
}

#[tokio::test(start_paused = true)]
async fn the_request_has_max_tokens_top_level_system_and_anthropic_headers() {
    let h = start(Script::single(Reply::anthropic_text(WORDS)), 100, TIMEOUTS).await;
    for body in [
        r#"{"input":"a","max_tokens":5}"#,
        r#"{"input":"b","max_tokens":500}"#,
        r#"{"messages":[{"role":"system","content":"Use French."},{"role":"user","content":"c"},{"role":"assistant","content":"d"},{"role":"user","content":"e"}]}"#,
    ] {
        let events = SseReader::new(post(h.addr(), body).await).collect().await;
        assert_eq!(names(&events).last(), Some(&"done"));
    }
    let sent = h.mock.journal().requests();
    let max: Vec<_> = sent
        .iter()
        .map(|r| r.body["max_tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(max, [5, 100, 100]);
    for r in &sent {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/messages");
        assert_eq!(r.header("x-api-key"), Some(KEY));
        assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("accept"), Some("text/event-stream"));
        assert_eq!(r.header("authorization"), None);
        assert_eq!(r.body["stream"], true);
        assert_eq!(r.body["model"], "claude-sonnet-4-20250514");
        assert_eq!(r.body["temperature"], 0.2);
        assert!(r.body.get("stream_options").is_none());
        let messages = r.body["messages"].as_array().unwrap();
        assert!(messages.iter().all(|m| m["role"] != "system"));
        assert_eq!(messages[0]["role"], "user");
    }
    assert_eq!(sent[0].body["system"], "Be brief.");
    assert_eq!(sent[0].body["messages"][0]["content"], "a");
    // The pipeline's system prompt comes first, then the client's.
    assert_eq!(sent[2].body["system"], "Be brief.\n\nUse French.");
    let roles: Vec<_> = sent[2].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
}

#[tokio::test(start_paused = true)]
async fn an_error_event_mid_stream_is_an_upstream_error_then_done() {
    let body = concat!(
        "event: message_start\n",
        r#"data: {"type":"message_start","message":{"usage":{"input_tokens":9,"output_tokens":1}}}"#,
        "\n\nevent: content_block_start\n",
        r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        "\n\nevent: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
        "\n\nevent: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" there"}}"#,
        "\n\nevent: error\n",
        r#"data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        "\n\n",
    );
    let h = start(Script::single(Reply::recorded(body)), 256, TIMEOUTS).await;
    let events = SseReader::new(post(h.addr(), r#"{"input":"hi"}"#).await)
        .collect()
        .await;
    assert_eq!(
        names(&events),
        ["start", "delta", "delta", "usage", "error", "done"]
    );
    assert_eq!(text(&events), "Hello there");
    let err = &find(&events, "error").unwrap().data;
    assert_eq!(err["code"], "upstream");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("overloaded_error: Overloaded"),
        "{message}"
    );
    assert_eq!(find(&events, "usage").unwrap().data["estimated"], true);
    assert_eq!(
        find(&events, "done").unwrap().data["finish_reason"],
        "error"
    );
}

#[tokio::test(start_paused = true)]
async fn overloaded_529_and_rate_limits_are_statuses_before_the_stream() {
    let h = start(
        Script::single(Reply::anthropic_text(WORDS).fault(Fault::Status {
            status: 529,
            retry_after: None,
        }))
        .then(Reply::anthropic_text(WORDS).fault(Fault::Status {
            status: 429,
            retry_after: Some(7),
        })),
        256,
        TIMEOUTS,
    )
    .await;
    let resp = post(h.addr(), r#"{"input":"hi"}"#).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let body = body_json(resp).await;
    assert_eq!(body["error"]["code"], "upstream");
    assert_eq!(body["error"]["upstream_status"], 529);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("overloaded_error: Overloaded"),
        "{message}"
    );
    assert!(!message.contains(KEY));

    let resp = post(h.addr(), r#"{"input":"hi"}"#).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "7");
    let body = body_json(resp).await;
    assert_eq!(body["error"]["code"], "upstream_rate_limited");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rate_limit_error")
    );
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_mid_stream_closes_the_upstream() {
    // message_start, block start, ping and two words, then silence.
    let reply = Reply::anthropic_text(WORDS).fault(Fault::StallAfter {
        events: 5,
        duration: None,
    });
    let h = start(
        Script::single(reply),
        256,
        "{first_token: 2s, idle: 3s, total: 10s}",
    )
    .await;
    let t0 = Instant::now();
    let events = SseReader::new(post(h.addr(), r#"{"input":"hi"}"#).await)
        .collect()
        .await;
    assert_eq!(
        names(&events),
        ["start", "delta", "delta", "usage", "error", "done"]
    );
    assert_eq!(text(&events), "Hello there");
    let err = find(&events, "error").unwrap();
    assert_eq!(err.data["code"], "timeout.idle");
    assert_eq!(err.at.duration_since(t0), Duration::from_secs(3));
    let closed = closed_after(&h, 0, t0).await;
    assert!(
        closed >= Duration::from_secs(3) && closed <= Duration::from_millis(3100),
        "upstream closed {closed:?} after the start, expected within 100ms after 3s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_flood_is_cut_at_the_ceiling_and_the_upstream_closed() {
    let h = start(Script::single(Reply::anthropic_flood(" tok")), 20, TIMEOUTS).await;
    let t0 = Instant::now();
    let events = SseReader::new(post(h.addr(), r#"{"input":"count forever"}"#).await)
        .collect()
        .await;
    let guard = sluice::tokens::completion_guard(20);
    assert_eq!(
        events.iter().filter(|e| e.name == "delta").count() as u64,
        guard
    );
    assert_eq!(
        find(&events, "error").unwrap().data["code"],
        "token_ceiling"
    );
    assert_eq!(
        find(&events, "done").unwrap().data["finish_reason"],
        "length"
    );
    let sent = h.mock.journal().requests()[0].events_sent as u64;
    assert!(
        sent < guard + 20,
        "the mock sent {sent} events: the flood was not stopped"
    );
    assert!(closed_after(&h, 0, t0).await <= Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn one_line_switches_a_pipeline_between_openai_and_anthropic() {
    let oai = MockProvider::start(Script::single(Reply::text(WORDS)))
        .await
        .unwrap();
    let claude = MockProvider::start(Script::single(Reply::anthropic_text(WORDS)))
        .await
        .unwrap();
    let settings = settings(&oai.base_url(), &claude.base_url());
    let on_claude = pipeline_yaml(64, TIMEOUTS);
    let on_oai = on_claude.replacen("  provider: claude\n", "  provider: oai\n", 1);
    let changed = on_claude
        .lines()
        .zip(on_oai.lines())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(changed, 1, "the two pipelines differ in one line");

    let mut answers = Vec::new();
    for yaml in [&on_oai, &on_claude] {
        let server = serve(compile(&settings, yaml)).await;
        let events = SseReader::new(post(server.addr, r#"{"input":"hi"}"#).await)
            .collect()
            .await;
        let usage = find(&events, "usage").unwrap().data.clone();
        let done = find(&events, "done").unwrap().data.clone();
        answers.push((names(&events).join(","), text(&events), usage, done));
        server.stop().await;
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].1, "Hello there, how are you?");
    assert_eq!(answers[0].2["estimated"], false);
    // Each call went to its own upstream, on its own wire.
    assert_eq!(oai.journal().requests()[0].path, "/v1/chat/completions");
    assert_eq!(claude.journal().requests()[0].path, "/v1/messages");
    assert_eq!(oai.journal().request_count(), 1);
    assert_eq!(claude.journal().request_count(), 1);
}

#[test]
fn anthropic_settings_default_the_url_warn_on_a_missing_key_and_reject_replay_keys() {
    let settings = (
        PathBuf::from("settings.yaml"),
        "providers:\n  claude:\n    kind: anthropic\n    api_key_env: SLUICE_TEST_ANTHROPIC_KEY_NEVER_SET\n"
            .to_string(),
    );
    let catalog = compile(&settings, &pipeline_yaml(64, TIMEOUTS));
    assert!(catalog.pipelines.contains_key("chat"));
    let warnings: Vec<String> = catalog.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("SLUICE_TEST_ANTHROPIC_KEY_NEVER_SET is not set"),
        "{warnings:?}"
    );

    let settings = (
        PathBuf::from("settings.yaml"),
        "providers:\n  claude:\n    kind: anthropic\n    fixtures: .\n    pace: 1s\n    base_url: ftp://x\n"
            .to_string(),
    );
    let errors = match compile_sources(
        &settings,
        &[(PathBuf::from("chat.yaml"), pipeline_yaml(64, TIMEOUTS))],
    ) {
        Ok(_) => panic!("replay keys must be rejected"),
        Err(d) => d.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
    };
    let all = errors.join("\n");
    for needle in [
        "\"fixtures\" does not apply to a provider of kind \"anthropic\"",
        "\"pace\" does not apply to a provider of kind \"anthropic\"",
        "invalid base_url \"ftp://x\"",
    ] {
        assert!(all.contains(needle), "{needle} not in:\n{all}");
    }
}
