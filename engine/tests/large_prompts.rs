//! Counting a long prompt is CPU work (a megabyte of text keeps the
//! tokenizer busy for most of a second): it runs on the blocking pool, at
//! most two at a time, so the async workers go on serving health checks
//! and streams meanwhile. This runs on a current-thread runtime, the
//! server's only worker: were a prompt counted on it, `/healthz` could not
//! answer until the count was done.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use sluice_testkit::{Reply, Script};

/// Waits until a count has started (the bodies are read first), then
/// asks `/healthz`, which must answer while counts are still running.
async fn health_answers_while_counting(addr: std::net::SocketAddr) {
    for _ in 0..100_000 {
        if sluice::tokens::prompts_being_counted() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        sluice::tokens::prompts_being_counted() > 0,
        "no count started"
    );
    let health = send(
        addr,
        Request::get("/healthz")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(health.status(), StatusCode::OK);
    assert!(
        sluice::tokens::prompts_being_counted() > 0,
        "the health check was answered only after every count was done"
    );
}

/// The count of prompts being counted is one for the process: the tests
/// here take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn health_checks_answer_while_long_prompts_are_counted() {
    let _turn = SERIAL.lock().await;
    let h = Harness::start_with(
        Script::single(Reply::text(&["ok"])),
        64,
        "{connect: 1s, first_token: 60s, idle: 60s, total: 120s}",
        ", max_body_bytes: 8388608",
    )
    .await;
    // Six prompts of 1 MB of varied words.
    let words = ["alpha ", "beta ", "gamma ", "delta ", "epsilon ", "zeta "];
    let prompt: String = (0..180_000).map(|i| words[i % words.len()]).collect();
    let body = serde_json::json!({ "input": prompt }).to_string();
    let addr = h.addr();
    let big: Vec<_> = (0..6)
        .map(|_| {
            let body = body.clone();
            tokio::spawn(async move { post(addr, &body).await.status() })
        })
        .collect();
    health_answers_while_counting(addr).await;
    for t in big {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(sluice::tokens::prompts_being_counted(), 0);
}

/// The same for a client's tool definitions: 128 tools with long
/// descriptions are counted off the workers too (`count_tokens` costs no
/// provider call, so a client could repeat it freely).
#[tokio::test]
async fn health_checks_answer_while_long_tool_definitions_are_counted() {
    let _turn = SERIAL.lock().await;
    let h = Harness::start_with(
        Script::single(Reply::text(&["ok"])),
        64,
        "{connect: 1s, first_token: 60s, idle: 60s, total: 120s}",
        ", max_body_bytes: 8388608",
    )
    .await;
    let words = ["alpha ", "beta ", "gamma ", "delta ", "epsilon ", "zeta "];
    let description: String = (0..1_400).map(|i| words[i % words.len()]).collect();
    let tools: Vec<_> = (0..128)
        .map(|i| serde_json::json!({"name": format!("tool_{i}"), "description": description, "input_schema": {"type": "object"}}))
        .collect();
    let body = serde_json::json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "tools": tools}).to_string();
    let addr = h.addr();
    let big: Vec<_> = (0..6)
        .map(|_| {
            let body = body.clone();
            tokio::spawn(async move {
                let resp = send(addr, post_json("/v1/messages/count_tokens", &body)).await;
                (resp.status(), body_json(resp).await)
            })
        })
        .collect();
    health_answers_while_counting(addr).await;
    for t in big {
        let (status, counted) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(counted["input_tokens"].as_u64().unwrap() > 128 * 1_400);
    }
    assert_eq!(sluice::tokens::prompts_being_counted(), 0);
}
