//! Retries and fallbacks, before the first byte only: black-box against two
//! mock providers on tokio's paused clock.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use http::StatusCode;
use sluice::compile::compile_sources;
use sluice::serve::RunningServer;
use sluice_testkit::{Fault, MockProvider, Reply, Script};
use tokio::time::Instant;

const WORDS: &[&str] = &["fine", " thanks"];

fn status(code: u16, retry_after: Option<u64>) -> Reply {
    Reply::text(WORDS).fault(Fault::Status {
        status: code,
        retry_after,
    })
}

async fn start(
    primary: &MockProvider,
    backup: &MockProvider,
    retries: &str,
    fallbacks: bool,
) -> RunningServer {
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: memory\nproviders:\n  primary: {{kind: openai, base_url: \"{}\"}}\n  backup: {{kind: openai, base_url: \"{}\"}}\n",
            primary.base_url(),
            backup.base_url()
        ),
    );
    let fallbacks = if fallbacks {
        "fallbacks: [{provider: backup, name: backup-model}]\n"
    } else {
        ""
    };
    let pipeline = (
        PathBuf::from("chat.yaml"),
        format!(
            "name: chat\nmodel: {{provider: primary, name: main-model}}\nlimits: {{max_tokens: 64}}\ntimeouts: {{first_token: 2s, idle: 2s, total: 20s}}\nretries: {retries}\n{fallbacks}"
        ),
    );
    let catalog = compile_sources(&settings, &[pipeline]).unwrap_or_else(|d| panic!("{d:#?}"));
    RunningServer::start(catalog, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_is_retried_after_at_least_that_long() {
    let primary =
        MockProvider::start(Script::single(status(429, Some(1))).then(Reply::text(WORDS)))
            .await
            .unwrap();
    let backup = MockProvider::start(Script::single(Reply::text(WORDS)))
        .await
        .unwrap();
    let server = start(&primary, &backup, "{attempts: 3, backoff: 10ms}", false).await;
    let events = SseReader::new(post(server.addr, r#"{"input":"hi"}"#).await)
        .collect()
        .await;
    assert_eq!(text(&events), "fine thanks");
    let reqs = primary.journal().requests();
    assert_eq!(reqs.len(), 2);
    let waited = reqs[1].received_at.duration_since(reqs[0].received_at);
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, Retry-After said 1s"
    );
    assert!(waited < Duration::from_millis(1100), "waited {waited:?}");
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn five_hundreds_exhaust_the_retries_then_the_fallback_answers() {
    let primary = MockProvider::start(Script::single(status(500, None)))
        .await
        .unwrap();
    let backup = MockProvider::start(Script::single(Reply::text(WORDS)))
        .await
        .unwrap();
    let server = start(
        &primary,
        &backup,
        "{attempts: 3, backoff: 100ms, max_backoff: 1s}",
        true,
    )
    .await;
    let t0 = Instant::now();
    let events = SseReader::new(post(server.addr, r#"{"input":"hi"}"#).await)
        .collect()
        .await;
    let start_ev = &find(&events, "start").unwrap().data;
    assert_eq!(start_ev["provider"], "backup");
    // The model as the provider names it (the mock, whatever it is asked).
    assert_eq!(start_ev["model"], "mock-model");
    assert_eq!(text(&events), "fine thanks");
    assert_eq!(primary.journal().request_count(), 3);
    assert_eq!(backup.journal().request_count(), 1);
    assert_eq!(backup.journal().requests()[0].body["model"], "backup-model");
    // Two backoffs: 50..100 ms, then 100..200 ms.
    let spent = backup.journal().requests()[0]
        .received_at
        .duration_since(t0);
    assert!(
        spent >= Duration::from_millis(150) && spent <= Duration::from_millis(300),
        "{spent:?}"
    );
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_400_is_not_retried_and_does_not_fall_back() {
    let primary = MockProvider::start(Script::single(status(400, None)))
        .await
        .unwrap();
    let backup = MockProvider::start(Script::single(Reply::text(WORDS)))
        .await
        .unwrap();
    let server = start(&primary, &backup, "{attempts: 3}", true).await;
    let resp = post(server.addr, r#"{"input":"hi"}"#).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let body = body_json(resp).await;
    assert_eq!(body["error"]["upstream_status"], 400);
    assert_eq!(body["error"]["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(primary.journal().request_count(), 1);
    assert_eq!(backup.journal().request_count(), 0);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failure_after_the_first_delta_is_not_retried() {
    let primary = MockProvider::start(Script::single(
        Reply::text(&["one", " two", " three"]).fault(Fault::DisconnectAfter {
            events: 3,
            reset: false,
        }),
    ))
    .await
    .unwrap();
    let backup = MockProvider::start(Script::single(Reply::text(WORDS)))
        .await
        .unwrap();
    let server = start(&primary, &backup, "{attempts: 3}", true).await;
    let events = SseReader::new(post(server.addr, r#"{"input":"hi"}"#).await)
        .collect()
        .await;
    assert_eq!(text(&events), "one two");
    assert_eq!(find(&events, "error").unwrap().data["code"], "upstream");
    assert_eq!(names(&events).last(), Some(&"done"));
    assert_eq!(primary.journal().request_count(), 1);
    assert_eq!(backup.journal().request_count(), 0);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_chain_that_all_fails_is_a_502_listing_every_attempt() {
    let primary = MockProvider::start(Script::single(status(503, None)))
        .await
        .unwrap();
    let backup = MockProvider::start(Script::single(status(529, None)))
        .await
        .unwrap();
    let server = start(&primary, &backup, "{attempts: 2, backoff: 10ms}", true).await;
    let resp = post(server.addr, r#"{"input":"hi"}"#).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let body = body_json(resp).await;
    let attempts = body["error"]["attempts"].as_array().unwrap();
    let tried: Vec<(String, u64)> = attempts
        .iter()
        .map(|a| {
            (
                a["provider"].as_str().unwrap().to_string(),
                a["upstream_status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tried,
        [
            ("primary".into(), 503),
            ("primary".into(), 503),
            ("backup".into(), 529),
            ("backup".into(), 529)
        ]
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("all 4 attempts failed")
    );
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn first_token_timeouts_are_retried_within_the_total_deadline() {
    let stall = Reply::text(WORDS).fault(Fault::StallAfter {
        events: 0,
        duration: None,
    });
    let primary = MockProvider::start(Script::single(stall.clone()).then(Reply::text(WORDS)))
        .await
        .unwrap();
    let backup = MockProvider::start(Script::single(Reply::text(WORDS)))
        .await
        .unwrap();
    let server = start(&primary, &backup, "{attempts: 2, backoff: 10ms}", false).await;
    let t0 = Instant::now();
    let events = SseReader::new(post(server.addr, r#"{"input":"hi"}"#).await)
        .collect()
        .await;
    assert_eq!(text(&events), "fine thanks");
    // The first try was abandoned at its 2 s first-token deadline, and its
    // connection closed then.
    let closed = primary
        .journal()
        .wait_closed(0, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(closed.duration_since(t0) >= Duration::from_secs(2));
    assert!(closed.duration_since(t0) <= Duration::from_millis(2100));
    assert_eq!(primary.journal().request_count(), 2);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_past_the_total_deadline_goes_straight_to_the_fallback() {
    let primary = MockProvider::start(Script::single(status(429, Some(3600))))
        .await
        .unwrap();
    let backup = MockProvider::start(Script::single(Reply::text(WORDS)))
        .await
        .unwrap();
    let server = start(&primary, &backup, "{attempts: 5}", true).await;
    let t0 = Instant::now();
    let events = SseReader::new(post(server.addr, r#"{"input":"hi"}"#).await)
        .collect()
        .await;
    assert_eq!(find(&events, "start").unwrap().data["provider"], "backup");
    assert_eq!(primary.journal().request_count(), 1);
    assert!(Instant::now().duration_since(t0) < Duration::from_secs(1));
    server.stop().await;
}
