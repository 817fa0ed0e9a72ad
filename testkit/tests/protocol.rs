//! HTTP handling, the journal, keep-alive and script slots, lifecycle.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Client, T, chat_body, json_events};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use sluice_testkit::{Fault, MockProvider, Reply, Script};

fn two_texts() -> Script {
    Script::single(Reply::text(&["first"])).then(Reply::text(&["second"]))
}

fn content_of(body: &[u8]) -> String {
    json_events(body)
        .iter()
        .filter_map(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn journal_records_request_and_keep_alive_uses_next_slot() {
    let mock = MockProvider::start(two_texts()).await.unwrap();
    let journal = mock.journal();
    let mut c = Client::connect(mock.addr()).await;
    let body = json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "héllo"}]});
    c.post("/v1/chat/completions?x=1", &body).await;
    assert_eq!(c.read_head().await.unwrap().status, 200);
    assert_eq!(content_of(&c.read_body().await.unwrap()), "first");
    c.chat(true).await;
    assert_eq!(c.read_head().await.unwrap().status, 200);
    assert_eq!(content_of(&c.read_body().await.unwrap()), "second");
    // The last reply repeats.
    c.chat(true).await;
    c.read_head().await.unwrap();
    assert_eq!(content_of(&c.read_body().await.unwrap()), "second");

    assert!(journal.wait_for_requests(3, T).await);
    let reqs = journal.requests();
    assert_eq!(journal.request_count(), 3);
    let r0 = &reqs[0];
    assert_eq!(r0.method, "POST");
    assert_eq!(r0.path, "/v1/chat/completions?x=1");
    assert_eq!(r0.body, body);
    assert_eq!(r0.raw_body, Bytes::from(body.to_string()));
    assert_eq!(r0.header("AUTHORIZATION"), Some("Bearer sk-test"));
    assert!(
        r0.headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/json")
    );
    assert_eq!(
        reqs.iter().map(|r| r.slot).collect::<Vec<_>>(),
        [Some(0), Some(1), Some(2)]
    );
    assert!(reqs.iter().all(|r| r.connection == reqs[0].connection));
    assert!(
        reqs.iter()
            .all(|r| r.completed_at.is_some() && r.client_closed_at.is_none())
    );

    // Closing the idle keep-alive connection is a close after completion.
    drop(c);
    let closed = journal.wait_closed(1, T).await.unwrap();
    let r1 = journal.request(1).unwrap();
    assert_eq!(
        (r1.client_closed_at, r1.connection_closed_at),
        (None, Some(closed))
    );
}

#[tokio::test(start_paused = true)]
async fn script_slots_count_across_connections() {
    let mock = MockProvider::start(two_texts()).await.unwrap();
    for expected in ["first", "second", "second"] {
        let mut c = Client::connect(mock.addr()).await;
        c.chat(true).await;
        c.read_head().await.unwrap();
        assert_eq!(content_of(&c.read_body().await.unwrap()), expected);
    }
    let conns: Vec<_> = mock
        .journal()
        .requests()
        .iter()
        .map(|r| r.connection)
        .collect();
    assert_eq!(conns, [0, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn unknown_route_is_404_json_and_takes_no_slot() {
    let mock = MockProvider::start(two_texts()).await.unwrap();
    let mut c = Client::connect(mock.addr()).await;
    c.send_raw(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let head = c.read_head().await.unwrap();
    assert_eq!(head.status, 404);
    let len = head.header("content-length").unwrap().parse().unwrap();
    let err: serde_json::Value =
        serde_json::from_slice(&c.read_exact_body(len).await.unwrap()).unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/models")
    );
    // Same connection, now a chat request: slot 0.
    c.chat(true).await;
    c.read_head().await.unwrap();
    assert_eq!(content_of(&c.read_body().await.unwrap()), "first");
    let reqs = mock.journal().requests();
    assert_eq!((reqs[0].slot, reqs[1].slot), (None, Some(0)));
    assert_eq!(reqs[0].body, serde_json::Value::Null);
}

#[tokio::test(start_paused = true)]
async fn malformed_requests_get_400() {
    let mock = MockProvider::start(two_texts()).await.unwrap();
    let bad: [&[u8]; 5] = [
        b"NONSENSE\r\n\r\n",
        b"POST /v1/chat/completions HTTP/9.9\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nbad header\r\n\r\n",
    ];
    for raw in bad {
        let mut c = Client::connect(mock.addr()).await;
        c.send_raw(raw).await;
        let head = c.read_head().await.unwrap();
        assert_eq!(head.status, 400, "{}", String::from_utf8_lossy(raw));
        let (rest, end) = c.read_to_close().await;
        assert!(end.is_ok());
        let err: serde_json::Value = serde_json::from_slice(&rest).unwrap();
        assert_eq!(err["error"]["type"], "invalid_request_error");
    }
    // A well-formed request whose body is not JSON: 400, recorded with a Null body.
    let mut c = Client::connect(mock.addr()).await;
    c.send_raw(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!(c.read_head().await.unwrap().status, 400);
    let r = mock.journal().request(0).unwrap();
    assert_eq!(
        (r.body.clone(), r.raw_body.clone(), r.slot),
        (serde_json::Value::Null, Bytes::from("hello"), None)
    );
}

#[tokio::test(start_paused = true)]
async fn chunked_request_body_expect_continue_and_pipelining() {
    let mock = MockProvider::start(two_texts()).await.unwrap();
    let mut c = Client::connect(mock.addr()).await;
    let body = chat_body(true).to_string();
    let (a, b) = body.split_at(10);
    let req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    c.send_raw(req).await;
    let head = c.read_head().await.unwrap();
    assert_eq!(head.status, 100);
    let chunked = format!(
        "{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    // Pipeline a second request right behind the first.
    let second = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.send_raw(format!("{chunked}{second}").as_bytes()).await;
    assert_eq!(c.read_head().await.unwrap().status, 200);
    assert_eq!(content_of(&c.read_body().await.unwrap()), "first");
    assert_eq!(c.read_head().await.unwrap().status, 200);
    assert_eq!(content_of(&c.read_body().await.unwrap()), "second");
    let reqs = mock.journal().requests();
    assert_eq!(reqs[0].body, chat_body(true));
    assert_eq!(reqs[1].body, chat_body(true));
}

#[tokio::test(start_paused = true)]
async fn connection_close_is_honoured() {
    let mock = MockProvider::start(two_texts()).await.unwrap();
    let mut c = Client::connect(mock.addr()).await;
    let body = chat_body(true).to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.send_raw(req.as_bytes()).await;
    let head = c.read_head().await.unwrap();
    assert_eq!(head.header("connection"), Some("close"));
    c.read_body().await.unwrap();
    let (rest, end) = c.read_to_close().await;
    assert!(rest.is_empty() && end.is_ok());
}

#[tokio::test(start_paused = true)]
async fn wait_for_requests_times_out_in_virtual_time() {
    let mock = MockProvider::start(two_texts()).await.unwrap();
    let t0 = tokio::time::Instant::now();
    assert!(
        !mock
            .journal()
            .wait_for_requests(1, Duration::from_secs(30))
            .await
    );
    assert!(t0.elapsed() >= Duration::from_secs(30));
    assert_eq!(
        mock.journal().wait_closed(0, Duration::from_secs(1)).await,
        None
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_mock_closes_its_connections() {
    let mock = MockProvider::start(Script::single(Reply::text(&["a"]).fault(
        Fault::StallAfter {
            events: 1,
            duration: None,
        },
    )))
    .await
    .unwrap();
    let addr = mock.addr();
    let mut c = Client::connect(addr).await;
    c.chat(true).await;
    c.read_head().await.unwrap();
    c.read_chunk().await.unwrap().unwrap();
    drop(mock);
    let err = tokio::time::timeout(T, c.read_chunk())
        .await
        .expect("closed, not hanging");
    assert!(err.is_err());
    tokio::task::yield_now().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

/// A real HTTP client (hyper) over one keep-alive connection.
#[tokio::test(start_paused = true)]
async fn hyper_client_streams_and_reuses_the_connection() {
    let mock = MockProvider::start(
        Script::single(Reply::fixture("openai/text_stop.sse").fault(Fault::Fragment(5)))
            .then(Reply::fixture("openai/tool_call.sse").pace(Duration::from_millis(50))),
    )
    .await
    .unwrap();
    let stream = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    for name in ["openai/text_stop.sse", "openai/tool_call.sse"] {
        let req = hyper::Request::post(format!("{}/chat/completions", mock.base_url()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(chat_body(true).to_string())))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, common::fixture_bytes(name));
    }
    let reqs = mock.journal().requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].connection, reqs[1].connection);
    assert_eq!(reqs[1].slot, Some(1));
    drop(sender);
    driver.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn connection_close_answers_with_the_header_and_closes_after_the_reply() {
    let mock = MockProvider::start(Script::single(
        Reply::text(&["bye"]).fault(Fault::ConnectionClose),
    ))
    .await
    .unwrap();
    let mut c = Client::connect(mock.addr()).await;
    c.chat(true).await;
    let head = c.read_head().await.unwrap();
    assert_eq!(head.header("connection"), Some("close"));
    assert_eq!(content_of(&c.read_body().await.unwrap()), "bye");
    let (rest, end) = c.read_to_close().await;
    assert!(rest.is_empty() && end.is_ok(), "{rest:?} {end:?}");
    // The mock closed it: no client close is recorded.
    assert_eq!(mock.journal().wait_closed(0, T).await, None);
}

#[tokio::test(start_paused = true)]
async fn close_idle_after_closes_a_keep_alive_connection_left_idle() {
    let idle = Duration::from_secs(5);
    let mock = MockProvider::start(
        Script::single(Reply::text(&["first"]).fault(Fault::CloseIdleAfter(idle)))
            .then(Reply::text(&["second"]))
            .then(Reply::text(&["third"]).fault(Fault::CloseIdleAfter(idle))),
    )
    .await
    .unwrap();
    // A request within the idle time is served on the same connection.
    let mut c = Client::connect(mock.addr()).await;
    c.chat(true).await;
    let head = c.read_head().await.unwrap();
    assert_eq!(head.header("connection"), None);
    c.read_body().await.unwrap();
    tokio::time::sleep(idle - Duration::from_millis(1)).await;
    c.chat(true).await;
    c.read_head().await.unwrap();
    assert_eq!(content_of(&c.read_body().await.unwrap()), "second");
    // A second connection left idle past it is closed by the mock, at once
    // after the idle time.
    let mut c = Client::connect(mock.addr()).await;
    c.chat(true).await;
    c.read_head().await.unwrap();
    assert_eq!(content_of(&c.read_body().await.unwrap()), "third");
    let t0 = tokio::time::Instant::now();
    let (rest, end) = c.read_to_close().await;
    assert!(rest.is_empty() && end.is_ok(), "{rest:?} {end:?}");
    assert_eq!(t0.elapsed(), idle);
    let journal = mock.journal();
    assert_eq!(journal.wait_closed(2, T).await, None);
    assert_eq!(
        journal
            .requests()
            .iter()
            .map(|r| r.connection)
            .collect::<Vec<_>>(),
        [0, 0, 1]
    );
}
