//! Black-box tests of the streaming path: a real Sluice server on a loopback
//! port in front of the testkit's mock provider, read as an SSE client.
//! Every test runs on tokio's paused clock, so deadlines of seconds take
//! microseconds and the measured times are exact virtual times.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use sluice_testkit::{Fault, Reply, Script};
use tokio::time::Instant;

const WORDS: &[&str] = &["Hello", " there", ",", " how", " are", " you", "?"];

fn words(n: usize) -> Vec<&'static str> {
    (0..n)
        .map(|i| if i % 2 == 0 { " alpha" } else { " beta" })
        .collect()
}

/// How long after `from` the mock saw the client (Sluice) close request `i`.
async fn closed_after(h: &Harness, i: usize, from: Instant) -> Duration {
    let closed = h
        .mock
        .journal()
        .wait_closed(i, Duration::from_secs(3600))
        .await
        .expect("sluice closed the upstream connection");
    closed.duration_since(from)
}

fn assert_within(actual: Duration, deadline: Duration, slack: Duration) {
    assert!(
        actual >= deadline && actual <= deadline + slack,
        "upstream closed {actual:?} after the start, expected within {slack:?} after {deadline:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_recorded_stream_arrives_as_start_deltas_usage_done() {
    let h = Harness::start(
        Script::single(Reply::fixture("openai/text_stop.sse")),
        256,
        TIMEOUTS,
    )
    .await;
    let resp = post(h.addr(), r#"{"input":"weather in SF?"}"#).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut r = SseReader::new(resp);
    let events = r.collect().await;
    assert_eq!(names(&events).first(), Some(&"start"));
    assert_eq!(&names(&events)[events.len() - 2..], &["usage", "done"]);
    assert_eq!(
        text(&events),
        "I'm unable to provide real-time weather updates. To get the current weather in San Francisco, I recommend checking a reliable weather website or a weather app."
    );
    let start = find(&events, "start").unwrap();
    assert_eq!(start.data["pipeline"], "chat");
    // The model that answered, as the recorded stream names it.
    assert_eq!(start.data["model"], "gpt-4o-2024-08-06");
    let usage = &find(&events, "usage").unwrap().data;
    assert_eq!(usage["prompt_tokens"], 14);
    assert_eq!(usage["completion_tokens"], 30);
    assert_eq!(usage["estimated"], false);
    assert_eq!(find(&events, "done").unwrap().data["finish_reason"], "stop");
    // ids are present and increase by one.
    let ids: Vec<u64> = events
        .iter()
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, (1..=events.len() as u64).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn first_token_timeout_before_headers_is_a_504_and_closes_the_upstream() {
    let reply = Reply::text(WORDS).fault(Fault::DelayHeaders(Duration::from_secs(60)));
    let h = Harness::start(Script::single(reply), 256, "{first_token: 2s, total: 10s}").await;
    let t0 = Instant::now();
    let resp = post(h.addr(), r#"{"input":"hi"}"#).await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(Instant::now().duration_since(t0), Duration::from_secs(2));
    let body = body_json(resp).await;
    assert_eq!(body["error"]["code"], "timeout.first_token");
    assert_within(
        closed_after(&h, 0, t0).await,
        Duration::from_secs(2),
        Duration::from_millis(100),
    );
}

#[tokio::test(start_paused = true)]
async fn first_token_timeout_counts_content_not_headers() {
    // Headers and the role-only chunk arrive at once; no token follows.
    let reply = Reply::text(WORDS).fault(Fault::StallAfter {
        events: 1,
        duration: None,
    });
    let h = Harness::start(Script::single(reply), 256, "{first_token: 2s, total: 10s}").await;
    let t0 = Instant::now();
    let resp = post(h.addr(), r#"{"input":"hi"}"#).await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        body_json(resp).await["error"]["code"],
        "timeout.first_token"
    );
    assert_within(
        closed_after(&h, 0, t0).await,
        Duration::from_secs(2),
        Duration::from_millis(100),
    );
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_mid_stream_is_an_error_event_and_closes_the_upstream() {
    // role chunk + two words, then silence.
    let reply = Reply::text(WORDS).fault(Fault::StallAfter {
        events: 3,
        duration: None,
    });
    let h = Harness::start(
        Script::single(reply),
        256,
        "{first_token: 2s, idle: 3s, total: 10s}",
    )
    .await;
    let t0 = Instant::now();
    let mut r = SseReader::new(post(h.addr(), r#"{"input":"hi"}"#).await);
    let events = r.collect().await;
    assert_eq!(
        names(&events),
        ["start", "delta", "delta", "usage", "error", "done"]
    );
    assert_eq!(text(&events), "Hello there");
    let err = find(&events, "error").unwrap();
    assert_eq!(err.data["code"], "timeout.idle");
    assert_eq!(err.at.duration_since(t0), Duration::from_secs(3));
    assert_eq!(
        find(&events, "done").unwrap().data["finish_reason"],
        "error"
    );
    let usage = &find(&events, "usage").unwrap().data;
    assert_eq!(usage["completion_tokens"], 2);
    assert_eq!(usage["estimated"], true);
    assert_within(
        closed_after(&h, 0, t0).await,
        Duration::from_secs(3),
        Duration::from_millis(100),
    );
}

#[tokio::test(start_paused = true)]
async fn total_timeout_cuts_a_slow_but_steady_stream() {
    let reply = Reply::text(&words(40)).pace(Duration::from_secs(1));
    let h = Harness::start(
        Script::single(reply),
        256,
        "{first_token: 5s, idle: 3s, total: 10s}",
    )
    .await;
    let t0 = Instant::now();
    let mut r = SseReader::new(post(h.addr(), r#"{"input":"hi"}"#).await);
    let events = r.collect().await;
    let err = find(&events, "error").expect("an error event");
    assert_eq!(err.data["code"], "timeout.total");
    assert_eq!(err.at.duration_since(t0), Duration::from_secs(10));
    assert_eq!(names(&events).last(), Some(&"done"));
    // role at 1s, words at 2s..=10s: the word due at exactly 10s may or may
    // not make it, the one at 11s never does.
    let deltas = events.iter().filter(|e| e.name == "delta").count();
    assert!((8..=9).contains(&deltas), "{deltas} deltas");
    assert_within(
        closed_after(&h, 0, t0).await,
        Duration::from_secs(10),
        Duration::from_millis(100),
    );
}

#[tokio::test(start_paused = true)]
async fn client_disconnect_while_upstream_is_silent_closes_the_upstream() {
    let reply = Reply::text(WORDS).fault(Fault::StallAfter {
        events: 3,
        duration: None,
    });
    let h = Harness::start(
        Script::single(reply),
        256,
        "{first_token: 5s, idle: 60s, total: 120s}",
    )
    .await;
    let (resp, conn) = send_on_own_connection(
        h.addr(),
        post_json("/v1/pipelines/chat", r#"{"input":"hi"}"#),
    )
    .await;
    let mut r = SseReader::new(resp);
    assert_eq!(r.next().await.unwrap().name, "start");
    assert_eq!(r.next().await.unwrap().name, "delta");
    assert_eq!(r.next().await.unwrap().name, "delta");
    // The upstream is now silent. Wait a little, then leave.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let dropped_at = Instant::now();
    drop(r);
    drop(conn);
    let after = closed_after(&h, 0, dropped_at).await;
    assert!(
        after <= Duration::from_millis(250),
        "upstream closed {after:?} after the client left"
    );
}

#[tokio::test(start_paused = true)]
async fn client_disconnect_before_the_first_token_closes_the_upstream() {
    let reply = Reply::text(WORDS).fault(Fault::DelayHeaders(Duration::from_secs(30)));
    let h = Harness::start(
        Script::single(reply),
        256,
        "{first_token: 60s, total: 120s}",
    )
    .await;
    let (mut sender, conn) = connect(h.addr()).await;
    let pending = sender.send_request(post_json("/v1/pipelines/chat", r#"{"input":"hi"}"#));
    assert!(
        tokio::time::timeout(Duration::from_secs(2), pending)
            .await
            .is_err()
    );
    assert!(
        h.mock
            .journal()
            .wait_for_requests(1, Duration::from_secs(1))
            .await
    );
    let dropped_at = Instant::now();
    drop(sender);
    drop(conn);
    let after = closed_after(&h, 0, dropped_at).await;
    assert!(
        after <= Duration::from_millis(250),
        "upstream closed {after:?} after the client left"
    );
}

#[tokio::test(start_paused = true)]
async fn a_flood_is_cut_at_the_ceiling_and_the_upstream_closed() {
    let h = Harness::start(Script::single(Reply::flood(" tok")), 20, TIMEOUTS).await;
    let t0 = Instant::now();
    let mut r = SseReader::new(post(h.addr(), r#"{"input":"count forever"}"#).await);
    let events = r.collect().await;
    // Cut at the ceiling's margin above max_tokens (see
    // `tokens::completion_guard`), counted over the whole text.
    let guard = sluice::tokens::completion_guard(20);
    let deltas = events.iter().filter(|e| e.name == "delta").count() as u64;
    assert_eq!(deltas, guard);
    assert_eq!(sluice::tokens::count(&text(&events)), guard);
    assert_eq!(
        find(&events, "error").unwrap().data["code"],
        "token_ceiling"
    );
    assert_eq!(
        find(&events, "done").unwrap().data["finish_reason"],
        "length"
    );
    let usage = &find(&events, "usage").unwrap().data;
    assert_eq!(usage["completion_tokens"], guard);
    assert_eq!(usage["estimated"], true);
    assert_eq!(usage["counted_by"], "sluice:o200k");
    let sent = h.mock.journal().requests()[0].events_sent as u64;
    assert!(
        sent < guard + 20,
        "the mock sent {sent} events: the flood was not stopped"
    );
    assert!(closed_after(&h, 0, t0).await <= Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn max_tokens_upstream_is_the_smaller_of_client_and_ceiling_and_usage_is_always_asked() {
    let h = Harness::start(Script::single(Reply::text(WORDS)), 100, TIMEOUTS).await;
    for body in [
        r#"{"input":"a","max_tokens":5}"#,
        r#"{"input":"b","max_tokens":500}"#,
        r#"{"messages":[{"role":"user","content":"c"}]}"#,
    ] {
        let mut r = SseReader::new(post(h.addr(), body).await);
        let events = r.collect().await;
        assert_eq!(names(&events).last(), Some(&"done"));
    }
    let sent: Vec<_> = h
        .mock
        .journal()
        .requests()
        .into_iter()
        .map(|r| r.body)
        .collect();
    let max: Vec<_> = sent
        .iter()
        .map(|b| b["max_tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(max, [5, 100, 100]);
    for b in &sent {
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["model"], "gpt-4o-mini");
        assert_eq!(b["messages"][0]["role"], "system");
        assert_eq!(b["messages"][0]["content"], "Be brief.");
        assert_eq!(b["messages"][1]["role"], "user");
    }
}

#[tokio::test(start_paused = true)]
async fn malformed_upstream_data_mid_stream_is_a_clean_error_event() {
    let reply = Reply::text(WORDS).fault(Fault::MalformedAt(3));
    let h = Harness::start(Script::single(reply), 256, TIMEOUTS).await;
    let mut r = SseReader::new(post(h.addr(), r#"{"input":"hi"}"#).await);
    let events = r.collect().await;
    assert_eq!(
        names(&events),
        ["start", "delta", "delta", "usage", "error", "done"]
    );
    assert_eq!(find(&events, "error").unwrap().data["code"], "upstream");
}

#[tokio::test(start_paused = true)]
async fn malformed_upstream_data_before_the_first_token_is_a_502() {
    let reply = Reply::text(WORDS).fault(Fault::MalformedAt(0));
    let h = Harness::start(Script::single(reply), 256, TIMEOUTS).await;
    let resp = post(h.addr(), r#"{"input":"hi"}"#).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(body_json(resp).await["error"]["code"], "upstream");
}

#[tokio::test(start_paused = true)]
async fn a_truncated_stream_after_the_answer_ends_well_with_estimated_usage() {
    let reply = Reply::text(WORDS).fault(Fault::Truncate);
    let h = Harness::start(Script::single(reply), 256, TIMEOUTS).await;
    let mut r = SseReader::new(post(h.addr(), r#"{"input":"hi"}"#).await);
    let events = r.collect().await;
    assert_eq!(&names(&events)[events.len() - 2..], ["usage", "done"]);
    assert_eq!(find(&events, "done").unwrap().data["finish_reason"], "stop");
    let usage = &find(&events, "usage").unwrap().data;
    assert_eq!(usage["estimated"], true);
    assert_eq!(usage["completion_tokens"], 7);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_hangs_up_mid_answer_gives_an_error_event() {
    for reset in [false, true] {
        let reply = Reply::text(WORDS).fault(Fault::DisconnectAfter { events: 4, reset });
        let h = Harness::start(Script::single(reply), 256, TIMEOUTS).await;
        let mut r = SseReader::new(post(h.addr(), r#"{"input":"hi"}"#).await);
        let events = r.collect().await;
        assert_eq!(
            names(&events),
            ["start", "delta", "delta", "delta", "usage", "error", "done"],
            "reset: {reset}"
        );
        assert_eq!(find(&events, "error").unwrap().data["code"], "upstream");
    }
}

#[tokio::test(start_paused = true)]
async fn upstream_http_errors_are_statuses_before_the_stream() {
    let h = Harness::start(
        Script::single(Reply::text(WORDS).fault(Fault::Status {
            status: 500,
            retry_after: None,
        }))
        .then(Reply::text(WORDS).fault(Fault::Status {
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
    assert_eq!(body["error"]["upstream_status"], 500);

    let resp = post(h.addr(), r#"{"input":"hi"}"#).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(
        body_json(resp).await["error"]["code"],
        "upstream_rate_limited"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_provider_is_a_502() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let cat = catalog(&format!("http://127.0.0.1:{port}/v1"), 256, TIMEOUTS);
    let server = sluice::serve::RunningServer::start(cat, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let resp = post(server.addr, r#"{"input":"hi"}"#).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(body_json(resp).await["error"]["code"], "upstream");
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn each_event_is_flushed_before_the_next_upstream_chunk_is_produced() {
    let reply = Reply::text(WORDS).pace(Duration::from_secs(1));
    let h = Harness::start(
        Script::single(reply),
        256,
        "{first_token: 5s, idle: 3s, total: 60s}",
    )
    .await;
    let journal = h.mock.journal();
    let mut r = SseReader::new(post(h.addr(), r#"{"input":"hi"}"#).await);
    let mut deltas = 0;
    while let Some(ev) = r.next().await {
        if ev.name == "delta" {
            deltas += 1;
            // Event 0 is the role chunk; word k is upstream event k. When
            // the client holds word k, the mock has not sent word k+1.
            let sent = journal.requests()[0].events_sent;
            assert_eq!(
                sent,
                deltas + 1,
                "delta {deltas} arrived only after {sent} upstream events"
            );
            assert!(r.raw.ends_with(b"\n\n"));
        }
    }
    assert_eq!(deltas, WORDS.len());
    // Every event is `event:`, `id:`, `data:` and a blank line.
    let raw = String::from_utf8(r.raw.clone()).unwrap();
    let blocks: Vec<&str> = raw.split_terminator("\n\n").collect();
    assert_eq!(blocks.len(), WORDS.len() + 3);
    for b in blocks {
        let lines: Vec<&str> = b.lines().collect();
        assert_eq!(lines.len(), 3, "{b:?}");
        assert!(
            lines[0].starts_with("event: ")
                && lines[1].starts_with("id: ")
                && lines[2].starts_with("data: {")
        );
    }
}

#[tokio::test(start_paused = true)]
async fn keep_alive_comments_flow_while_the_upstream_is_silent() {
    let reply = Reply::text(WORDS).fault(Fault::StallAfter {
        events: 3,
        duration: Some(Duration::from_secs(40)),
    });
    let h = Harness::start(
        Script::single(reply),
        256,
        "{first_token: 5s, idle: 60s, total: 120s}",
    )
    .await;
    let mut r = SseReader::new(post(h.addr(), r#"{"input":"hi"}"#).await);
    let events = r.collect().await;
    assert_eq!(find(&events, "done").unwrap().data["finish_reason"], "stop");
    assert_eq!(text(&events), WORDS.concat());
    // 40 s of silence with a 15 s interval.
    assert_eq!(r.comments, 2);
}

#[tokio::test(start_paused = true)]
async fn stream_false_returns_one_json_document() {
    let h = Harness::start(
        Script::single(Reply::fixture("openai/text_stop.sse")),
        256,
        TIMEOUTS,
    )
    .await;
    let resp = post(h.addr(), r#"{"input":"hi","stream":false}"#).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = body_json(resp).await;
    assert!(
        body["output"]
            .as_str()
            .unwrap()
            .starts_with("I'm unable to provide real-time weather")
    );
    assert_eq!(body["finish_reason"], "stop");
    assert_eq!(body["usage"]["total_tokens"], 44);
    assert_eq!(body["pipeline"], "chat");
}

#[tokio::test(start_paused = true)]
async fn stream_false_with_a_mid_answer_timeout_is_a_504_with_the_partial_output() {
    let reply = Reply::text(WORDS).fault(Fault::StallAfter {
        events: 3,
        duration: None,
    });
    let h = Harness::start(
        Script::single(reply),
        256,
        "{first_token: 2s, idle: 3s, total: 10s}",
    )
    .await;
    let resp = post(h.addr(), r#"{"input":"hi","stream":false}"#).await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    let body = body_json(resp).await;
    assert_eq!(body["error"]["code"], "timeout.idle");
    assert_eq!(body["output"], "Hello there");
}

#[tokio::test(start_paused = true)]
async fn connect_timeout_covers_a_tls_handshake_that_never_answers() {
    // A listener that accepts TCP and then says nothing: the TLS handshake
    // of an https provider hangs inside the connect phase.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let cat = catalog(
        &format!("https://localhost:{port}/v1"),
        256,
        "{connect: 1500ms, first_token: 5s, total: 10s}",
    );
    let server = sluice::serve::RunningServer::start(cat, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let t0 = Instant::now();
    let resp = post(server.addr, r#"{"input":"hi"}"#).await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        Instant::now().duration_since(t0),
        Duration::from_millis(1500)
    );
    assert_eq!(body_json(resp).await["error"]["code"], "timeout.connect");
    server.stop().await;
    held.abort();
}
