//! Timing and connection faults, measured on tokio's paused clock.

mod common;

use std::io::ErrorKind;
use std::time::Duration;

use common::{Client, T, json_events};
use sluice_testkit::{Fault, Gate, MockProvider, Reply, Script};
use tokio::time::Instant;

async fn start(reply: Reply) -> MockProvider {
    MockProvider::start(Script::single(reply)).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn status_429_with_retry_after_and_json_error() {
    let reply = Reply::text(&["x"]).fault(Fault::Status {
        status: 429,
        retry_after: Some(7),
    });
    let mock = start(reply).await;
    let mut c = Client::connect(mock.addr()).await;
    c.chat(true).await;
    let head = c.read_head().await.unwrap();
    assert_eq!(head.status, 429);
    assert_eq!(head.header("retry-after"), Some("7"));
    assert_eq!(head.header("content-type"), Some("application/json"));
    let len = head.header("content-length").unwrap().parse().unwrap();
    let body: serde_json::Value =
        serde_json::from_slice(&c.read_exact_body(len).await.unwrap()).unwrap();
    let err = &body["error"];
    assert!(err["message"].is_string());
    assert!(err["type"].is_string());
    assert_eq!(err["code"], "rate_limit_exceeded");
    let rec = mock.journal().wait_reply_done(0, T).await.unwrap();
    assert!(rec.completed_at.is_some());

    // Without Retry-After, and for a non-streaming request too.
    let mock = start(Reply::text(&["x"]).fault(Fault::Status {
        status: 503,
        retry_after: None,
    }))
    .await;
    let mut c = Client::connect(mock.addr()).await;
    c.chat(false).await;
    let head = c.read_head().await.unwrap();
    assert_eq!(head.status, 503);
    assert_eq!(head.header("retry-after"), None);
}

#[tokio::test(start_paused = true)]
async fn delay_headers_in_virtual_time() {
    let d = Duration::from_secs(12);
    let mock = start(Reply::text(&["a"]).fault(Fault::DelayHeaders(d))).await;
    let mut c = Client::connect(mock.addr()).await;
    let t0 = Instant::now();
    c.chat(true).await;
    let head = c.read_head().await.unwrap();
    let waited = t0.elapsed();
    assert_eq!(head.status, 200);
    assert!(
        waited >= d && waited < d + Duration::from_millis(5),
        "{waited:?}"
    );
    // The body follows at once.
    c.read_body().await.unwrap();
    assert!(t0.elapsed() < d + Duration::from_millis(5));
}

#[tokio::test(start_paused = true)]
async fn pace_delays_each_event() {
    let pace = Duration::from_millis(250);
    let mock = start(Reply::text(&["a", "b"]).pace(pace)).await;
    let mut c = Client::connect(mock.addr()).await;
    c.chat(true).await;
    let t0 = Instant::now();
    c.read_head().await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(5),
        "headers are not paced"
    );
    let mut n = 0;
    while c.read_chunk().await.unwrap().is_some() {
        n += 1;
        let at = t0.elapsed();
        assert!(
            at >= pace * n && at < pace * n + Duration::from_millis(5),
            "event {n} at {at:?}"
        );
    }
    assert_eq!(n, 6);
}

#[tokio::test(start_paused = true)]
async fn stall_forever_then_client_drop_is_recorded_at_once() {
    let reply = Reply::fixture("openai/text_stop.sse")
        .pace(Duration::from_millis(10))
        .fault(Fault::StallAfter {
            events: 3,
            duration: None,
        });
    let mock = start(reply).await;
    let journal = mock.journal();
    let mut c = Client::connect(mock.addr()).await;
    c.chat(true).await;
    c.read_head().await.unwrap();
    for _ in 0..3 {
        c.read_chunk().await.unwrap().unwrap();
    }
    // The mock is silent now, however long we wait.
    let next = tokio::time::timeout(Duration::from_secs(3600), c.read_chunk()).await;
    assert!(next.is_err(), "stalled stream sent something");
    let rec = journal.request(0).unwrap();
    assert_eq!(
        (rec.events_sent, rec.client_closed_at, rec.completed_at),
        (3, None, None)
    );

    let dropped_at = Instant::now();
    drop(c);
    let closed = journal.wait_closed(0, T).await.expect("close observed");
    assert!(closed >= dropped_at && closed - dropped_at < Duration::from_millis(5));
    let rec = journal.request(0).unwrap();
    assert_eq!(rec.client_closed_at, Some(closed));
    assert_eq!(rec.connection_closed_at, Some(closed));
    assert_eq!(rec.completed_at, None);
    assert_eq!(rec.events_sent, 3);
}

#[tokio::test(start_paused = true)]
async fn hold_after_waits_for_its_gate_then_sends_the_rest() {
    let gate = Gate::new();
    let mock = start(Reply::text(&["a", "b", "c"]).fault(Fault::HoldAfter {
        events: 2,
        gate: gate.clone(),
    }))
    .await;
    let journal = mock.journal();
    let mut c = Client::connect(mock.addr()).await;
    c.chat(true).await;
    c.read_head().await.unwrap();
    for _ in 0..2 {
        c.read_chunk().await.unwrap().unwrap();
    }
    // Held, however long the test waits.
    let next = tokio::time::timeout(Duration::from_secs(3600), c.read_chunk()).await;
    assert!(next.is_err(), "a held stream sent something");
    assert_eq!(journal.request(0).unwrap().events_sent, 2);

    gate.open();
    let rec = journal
        .wait_reply_done(0, T)
        .await
        .expect("the rest is sent");
    // Role, three words, finish, usage, [DONE].
    assert_eq!(rec.events_sent, 7);
    assert!(rec.completed_at.is_some());
}

#[tokio::test(start_paused = true)]
async fn client_drop_while_mock_sleeps_in_pace_or_header_delay() {
    for reply in [
        Reply::text(&["a", "b"]).pace(Duration::from_secs(30)),
        Reply::text(&["a"]).fault(Fault::DelayHeaders(Duration::from_secs(30))),
    ] {
        let mock = start(reply).await;
        let mut c = Client::connect(mock.addr()).await;
        c.chat(true).await;
        assert!(mock.journal().wait_for_requests(1, T).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let dropped_at = Instant::now();
        drop(c);
        let closed = mock.journal().wait_closed(0, T).await.unwrap();
        assert!(closed - dropped_at < Duration::from_millis(5));
        assert_eq!(mock.journal().request(0).unwrap().events_sent, 0);
    }
}

#[tokio::test(start_paused = true)]
async fn sixty_seconds_of_stalls_take_no_real_time() {
    let real = std::time::Instant::now();
    let reply = Reply::text(&["a", "b", "c"])
        .fault(Fault::StallAfter {
            events: 1,
            duration: Some(Duration::from_secs(20)),
        })
        .fault(Fault::StallAfter {
            events: 3,
            duration: Some(Duration::from_secs(40)),
        });
    let mock = start(reply).await;
    let mut c = Client::connect(mock.addr()).await;
    let t0 = Instant::now();
    c.chat(true).await;
    c.read_head().await.unwrap();
    let mut arrivals = Vec::new();
    while c.read_chunk().await.unwrap().is_some() {
        arrivals.push(t0.elapsed().as_secs());
    }
    // role | 20 s | a, b | 40 s | c, finish, usage, [DONE]
    assert_eq!(arrivals, [0, 20, 20, 60, 60, 60, 60]);
    assert!(t0.elapsed() >= Duration::from_secs(60));
    assert!(
        real.elapsed() < Duration::from_secs(5),
        "took {:?} of real time",
        real.elapsed()
    );
    let rec = mock.journal().wait_reply_done(0, T).await.unwrap();
    assert!(rec.completed_at.unwrap() - rec.received_at >= Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn disconnect_after_clean_is_eof_without_terminating_chunk() {
    let mock = start(
        Reply::fixture("openai/text_stop.sse").fault(Fault::DisconnectAfter {
            events: 4,
            reset: false,
        }),
    )
    .await;
    let mut c = Client::connect(mock.addr()).await;
    c.chat(true).await;
    c.read_head().await.unwrap();
    for _ in 0..4 {
        c.read_chunk().await.unwrap().unwrap();
    }
    let err = c.read_chunk().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "{err}");
    let journal = mock.journal();
    assert_eq!(
        journal.wait_closed(0, T).await,
        None,
        "the mock closed, not the client"
    );
    let rec = journal.request(0).unwrap();
    assert_eq!(
        (rec.events_sent, rec.completed_at, rec.client_closed_at),
        (4, None, None)
    );
}

#[tokio::test(start_paused = true)]
async fn disconnect_after_reset_is_connection_reset() {
    let mock = start(
        Reply::fixture("openai/text_stop.sse").fault(Fault::DisconnectAfter {
            events: 2,
            reset: true,
        }),
    )
    .await;
    let mut c = Client::connect(mock.addr()).await;
    c.chat(true).await;
    c.read_head().await.unwrap();
    let mut got = 0;
    let err = loop {
        match c.read_chunk().await {
            Ok(Some(_)) => got += 1,
            Ok(None) => panic!("stream completed"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(got <= 2);
    assert_eq!(
        mock.journal()
            .wait_reply_done(0, T)
            .await
            .unwrap()
            .events_sent,
        2
    );
}

#[tokio::test(start_paused = true)]
async fn disconnect_after_all_events_drops_only_the_terminating_chunk() {
    let mock = start(Reply::text(&["a"]).fault(Fault::DisconnectAfter {
        events: 5,
        reset: false,
    }))
    .await;
    let mut c = Client::connect(mock.addr()).await;
    c.chat(true).await;
    c.read_head().await.unwrap();
    for _ in 0..5 {
        c.read_chunk().await.unwrap().unwrap();
    }
    assert_eq!(
        c.read_chunk().await.unwrap_err().kind(),
        ErrorKind::UnexpectedEof
    );
}

#[tokio::test(start_paused = true)]
async fn flood_streams_until_the_client_closes() {
    let mock = start(Reply::flood("tok")).await;
    let journal = mock.journal();
    let mut c = Client::connect(mock.addr()).await;
    let body = serde_json::json!({"model": "m", "stream": true, "max_tokens": 5, "messages": []});
    c.post("/v1/chat/completions", &body).await;
    c.read_head().await.unwrap();
    let mut chunks = Vec::new();
    for _ in 0..500 {
        chunks.push(c.read_chunk().await.unwrap().expect("flood never ends"));
    }
    let evs = json_events(&chunks.concat());
    assert_eq!(evs.len(), 500);
    assert_eq!(evs[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        evs[1..]
            .iter()
            .all(|e| e["object"] == "chat.completion.chunk"
                && e["choices"][0]["delta"]["content"] == "tok"
                && e["choices"][0]["finish_reason"].is_null())
    );
    let dropped_at = Instant::now();
    drop(c);
    let closed = journal.wait_closed(0, T).await.unwrap();
    assert!(closed - dropped_at < Duration::from_millis(5));
    let rec = journal.request(0).unwrap();
    assert!(rec.events_sent >= 500);
    assert_eq!(rec.client_closed_at, Some(closed));
    assert_eq!(rec.completed_at, None);
}

#[tokio::test(start_paused = true)]
async fn paced_flood_with_fragments_and_stall() {
    let reply = Reply::flood("é")
        .pace(Duration::from_millis(100))
        .fault(Fault::Fragment(7))
        .fault(Fault::StallAfter {
            events: 3,
            duration: Some(Duration::from_secs(2)),
        });
    let mock = start(reply).await;
    let mut c = Client::connect(mock.addr()).await;
    c.chat(true).await;
    let t0 = Instant::now();
    c.read_head().await.unwrap();
    let mut body = Vec::new();
    while json_events(&body).len() < 5 {
        let chunk = c.read_chunk().await.unwrap().unwrap();
        assert!(chunk.len() <= 7);
        body.extend_from_slice(&chunk);
    }
    // 5 paces of 100 ms plus the 2 s stall.
    let t = t0.elapsed();
    assert!(
        t >= Duration::from_millis(2500) && t < Duration::from_millis(2510),
        "{t:?}"
    );
}
