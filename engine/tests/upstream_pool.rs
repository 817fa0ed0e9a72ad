//! The upstream connection pool, seen from outside: a real Sluice server in
//! front of the testkit's mock, whose journal numbers the connections it
//! accepted (equal numbers: a reused keep-alive connection) and records
//! when the gateway closed each one. On tokio's paused clock.
//!
//! A call whose stream ended cleanly leaves its connection for the next
//! call of the same provider; every other ending closes it at once.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use http::StatusCode;
use sluice::compile::compile_sources;
use sluice::serve::RunningServer;
use sluice_testkit::{Fault, Journal, MockProvider, Reply, Script};
use tokio::time::Instant;

const WORDS: &[&str] = &["Hello", " there", ",", " how", " are", " you", "?"];
const ANSWER: &str = "Hello there, how are you?";
/// Long enough for any close Sluice makes; the clock is paused, so waiting
/// it out costs no real time.
const WAIT: Duration = Duration::from_secs(60);

/// One request through the `chat` pipeline, read to its end; asserts that
/// it was a clean answer.
async fn ask(h: &Harness) {
    let events = SseReader::new(post(h.addr(), r#"{"input":"hi"}"#).await)
        .collect()
        .await;
    assert_eq!(text(&events), ANSWER);
    assert!(find(&events, "error").is_none(), "{events:?}");
    assert_eq!(find(&events, "done").unwrap().data["finish_reason"], "stop");
}

/// The connection numbers of all requests, in arrival order.
fn connections(journal: &Journal) -> Vec<usize> {
    journal.requests().iter().map(|r| r.connection).collect()
}

/// Whether Sluice still holds the connection of request `i` open after
/// `WAIT` (for a script without faults that make the mock close it).
async fn still_open(journal: &Journal, i: usize) -> bool {
    journal.wait_closed(i, WAIT).await.is_none()
        && journal.request(i).unwrap().closed_at().is_none()
}

#[tokio::test(start_paused = true)]
async fn sequential_calls_share_one_upstream_connection() {
    let h = Harness::start(Script::single(Reply::text(WORDS)), 256, TIMEOUTS).await;
    for _ in 0..3 {
        ask(&h).await;
    }
    let journal = h.mock.journal();
    assert_eq!(connections(&journal), [0, 0, 0]);
    // Kept open for the next call, not closed after each one.
    assert!(still_open(&journal, 2).await);
}

#[tokio::test(start_paused = true)]
async fn anthropic_calls_share_one_upstream_connection() {
    let mock = MockProvider::start(Script::single(Reply::anthropic_text(WORDS)))
        .await
        .unwrap();
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: memory\nserver: {{keepalive: 15s, shutdown_grace: 2s}}\nproviders:\n  claude:\n    kind: anthropic\n    base_url: {}\n",
            mock.base_url()
        ),
    );
    let pipeline = (
        PathBuf::from("chat.yaml"),
        format!(
            "name: chat\nmodel: {{provider: claude, name: claude-sonnet-4-20250514}}\nlimits: {{max_tokens: 256}}\ntimeouts: {TIMEOUTS}\n"
        ),
    );
    let catalog = compile_sources(&settings, &[pipeline]).expect("compiles");
    let server = RunningServer::start(catalog, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let h = Harness { mock, server };
    ask(&h).await;
    ask(&h).await;
    assert_eq!(connections(&h.mock.journal()), [0, 0]);
}

#[tokio::test(start_paused = true)]
async fn concurrent_calls_each_get_a_connection_and_later_calls_reuse_them() {
    let reply = Reply::text(WORDS).pace(Duration::from_millis(100));
    let h = Harness::start(Script::single(reply), 256, TIMEOUTS).await;
    tokio::join!(ask(&h), ask(&h));
    let journal = h.mock.journal();
    let both = connections(&journal);
    assert_ne!(both[0], both[1], "a busy connection was handed out");
    ask(&h).await;
    let third = journal.request(2).unwrap().connection;
    assert!(both.contains(&third), "{third} is a new connection");
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_at_the_ceiling_closes_its_connection_and_the_next_call_opens_one() {
    let script = Script::single(Reply::flood(" tok")).then(Reply::text(WORDS));
    let h = Harness::start(script, 20, TIMEOUTS).await;
    let t0 = Instant::now();
    let events = SseReader::new(post(h.addr(), r#"{"input":"count"}"#).await)
        .collect()
        .await;
    assert_eq!(
        find(&events, "error").unwrap().data["code"],
        "token_ceiling"
    );
    let journal = h.mock.journal();
    let closed = journal
        .wait_closed(0, WAIT)
        .await
        .expect("closed by sluice");
    assert!(closed.duration_since(t0) <= Duration::from_millis(100));
    assert!(journal.request(0).unwrap().sent_before_close().is_some());
    ask(&h).await;
    assert_eq!(connections(&journal), [0, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_mid_answer_closes_the_connection_and_it_is_not_reused() {
    let stall = Reply::text(WORDS).fault(Fault::StallAfter {
        events: 3,
        duration: None,
    });
    let script = Script::single(stall).then(Reply::text(WORDS));
    let h = Harness::start(script, 256, "{first_token: 5s, idle: 60s, total: 120s}").await;
    let (resp, conn) = send_on_own_connection(
        h.addr(),
        post_json("/v1/pipelines/chat", r#"{"input":"hi"}"#),
    )
    .await;
    let mut r = SseReader::new(resp);
    assert_eq!(r.next().await.unwrap().name, "start");
    assert_eq!(r.next().await.unwrap().name, "delta");
    let left_at = Instant::now();
    drop(r);
    drop(conn);
    let journal = h.mock.journal();
    let closed = journal
        .wait_closed(0, WAIT)
        .await
        .expect("closed by sluice");
    assert!(closed.duration_since(left_at) <= Duration::from_millis(250));
    assert!(journal.request(0).unwrap().sent_before_close().is_some());
    ask(&h).await;
    assert_eq!(connections(&journal), [0, 1]);
}

#[tokio::test(start_paused = true)]
async fn an_idle_timeout_closes_the_connection_and_it_is_not_reused() {
    let stall = Reply::text(WORDS).fault(Fault::StallAfter {
        events: 3,
        duration: None,
    });
    let script = Script::single(stall).then(Reply::text(WORDS));
    let h = Harness::start(script, 256, "{first_token: 2s, idle: 3s, total: 10s}").await;
    let events = SseReader::new(post(h.addr(), r#"{"input":"hi"}"#).await)
        .collect()
        .await;
    assert_eq!(find(&events, "error").unwrap().data["code"], "timeout.idle");
    let journal = h.mock.journal();
    let rec = journal.request(0).unwrap();
    let deadline = rec.idle_deadline(Duration::from_secs(3)).unwrap();
    let after = journal.wait_closed_after(0, deadline, WAIT).await;
    assert!(after.expect("closed by sluice") <= Duration::from_millis(100));
    ask(&h).await;
    assert_eq!(connections(&journal), [0, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_truncated_stream_is_not_reused_even_when_the_answer_was_complete() {
    // No `[DONE]` and no usage: the client still gets its answer (it had a
    // finish reason), but the stream did not end cleanly.
    let script = Script::single(Reply::text(WORDS).fault(Fault::Truncate)).then(Reply::text(WORDS));
    let h = Harness::start(script, 256, TIMEOUTS).await;
    let events = SseReader::new(post(h.addr(), r#"{"input":"hi"}"#).await)
        .collect()
        .await;
    assert_eq!(text(&events), ANSWER);
    let journal = h.mock.journal();
    assert!(journal.wait_closed(0, WAIT).await.is_some());
    ask(&h).await;
    assert_eq!(connections(&journal), [0, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_pooled_connection_the_provider_closed_while_idle_is_replaced_unseen() {
    let first = Reply::text(WORDS).fault(Fault::CloseIdleAfter(Duration::from_secs(5)));
    let h = Harness::start(
        Script::single(first).then(Reply::text(WORDS)),
        256,
        TIMEOUTS,
    )
    .await;
    ask(&h).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let journal = h.mock.journal();
    // The mock closed it (`wait_closed` gives `None` for the mock's closes).
    assert_eq!(journal.wait_closed(0, Duration::ZERO).await, None);
    assert!(journal.request(0).unwrap().closed_at().is_none());
    ask(&h).await;
    // The dead connection carried nothing: exactly two requests arrived.
    assert_eq!(connections(&journal), [0, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_connection_closed_right_after_its_answer_is_replaced_unseen() {
    // The provider closes as the next call starts: whether Sluice notices at
    // checkout or when hyper gives the unsent request back, the call goes
    // out once, on a new connection, and the client sees no error.
    let first = Reply::text(WORDS).fault(Fault::CloseIdleAfter(Duration::ZERO));
    let h = Harness::start(
        Script::single(first).then(Reply::text(WORDS)),
        256,
        TIMEOUTS,
    )
    .await;
    ask(&h).await;
    ask(&h).await;
    assert_eq!(connections(&h.mock.journal()), [0, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_connection_close_response_is_not_reused() {
    let first = Reply::text(WORDS).fault(Fault::ConnectionClose);
    let h = Harness::start(
        Script::single(first).then(Reply::text(WORDS)),
        256,
        TIMEOUTS,
    )
    .await;
    ask(&h).await;
    ask(&h).await;
    let journal = h.mock.journal();
    assert_eq!(
        journal.request(0).unwrap().header("connection"),
        None,
        "sluice asked for keep-alive (HTTP/1.1 default)"
    );
    assert_eq!(connections(&journal), [0, 1]);
}

#[tokio::test(start_paused = true)]
async fn an_error_status_closes_its_connection_and_it_is_not_reused() {
    let error = Reply::text(WORDS).fault(Fault::Status {
        status: 500,
        retry_after: None,
    });
    let h = Harness::start(
        Script::single(error).then(Reply::text(WORDS)),
        256,
        TIMEOUTS,
    )
    .await;
    let resp = post(h.addr(), r#"{"input":"hi"}"#).await;
    assert_ne!(resp.status(), StatusCode::OK);
    let journal = h.mock.journal();
    // The mock finished its reply and kept the connection open: Sluice closed it.
    assert!(journal.request(0).unwrap().completed_at.is_some());
    assert!(journal.wait_closed(0, WAIT).await.is_some());
    ask(&h).await;
    assert_eq!(connections(&journal), [0, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_connection_idle_past_the_limit_is_closed_not_reused() {
    let h = Harness::start(Script::single(Reply::text(WORDS)), 256, TIMEOUTS).await;
    ask(&h).await;
    tokio::time::sleep(Duration::from_secs(29)).await;
    ask(&h).await;
    assert_eq!(connections(&h.mock.journal()), [0, 0]);
    tokio::time::sleep(Duration::from_secs(31)).await;
    let before = Instant::now();
    ask(&h).await;
    let journal = h.mock.journal();
    assert_eq!(connections(&journal), [0, 0, 1]);
    // Closed by Sluice when the third call found it expired.
    let closed = journal
        .wait_closed(1, WAIT)
        .await
        .expect("closed by sluice");
    assert!(closed >= before);
}
