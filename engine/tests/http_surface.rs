//! Black-box tests of the HTTP surface: routes, precise rejections, headers,
//! HTTP/2 (h2c), and graceful shutdown.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_testkit::{Reply, Script};
use tokio::time::Instant;

const WORDS: &[&str] = &["One", " two", " three"];

async fn harness() -> Harness {
    Harness::start(Script::single(Reply::text(WORDS)), 64, TIMEOUTS).await
}

#[tokio::test(start_paused = true)]
async fn bad_requests_get_precise_errors_and_never_reach_the_provider() {
    let h = harness().await;
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("{not json", "not valid JSON", None),
        ("[1,2]", "must be a JSON object", None),
        ("{}", "missing \"messages\"", Some("messages")),
        (r#"{"messages":[]}"#, "is empty", Some("messages")),
        (
            r#"{"messages":{"role":"user"}}"#,
            "must be an array",
            Some("messages"),
        ),
        (
            r#"{"messages":[{"role":"robot","content":"x"}]}"#,
            "unknown role \"robot\"",
            Some("messages[0].role"),
        ),
        (
            r#"{"messages":[{"role":"user","content":42}]}"#,
            "content must be a string",
            Some("messages[0].content"),
        ),
        (
            r#"{"messages":[{"role":"user"}]}"#,
            "missing \"content\"",
            Some("messages[0].content"),
        ),
        (r#"{"input":7}"#, "must be a string", Some("input")),
        (
            r#"{"input":"x","max_tokens":0}"#,
            "positive integer",
            Some("max_tokens"),
        ),
        (
            r#"{"input":"x","max_tokens":1.5}"#,
            "positive integer",
            Some("max_tokens"),
        ),
        (
            r#"{"input":"x","stream":"no"}"#,
            "must be a boolean",
            Some("stream"),
        ),
        (
            r#"{"input":"x","metadata":"tag"}"#,
            "must be an object",
            Some("metadata"),
        ),
        (
            r#"{"input":"x","temperature":1}"#,
            "unknown field \"temperature\"",
            Some("temperature"),
        ),
    ];
    for (body, message, field) in cases {
        let resp = post(h.addr(), body).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        assert!(resp.headers().contains_key("x-request-id"));
        let json = body_json(resp).await;
        assert_eq!(json["error"]["code"], "invalid_request", "{body}");
        let got = json["error"]["message"].as_str().unwrap();
        assert!(got.contains(message), "{body}: {got}");
        assert_eq!(json["error"]["field"].as_str(), *field, "{body}");
    }
    assert_eq!(
        h.mock.journal().request_count(),
        0,
        "a bad request reached the provider"
    );
}

#[tokio::test(start_paused = true)]
async fn routing_method_size_and_content_type_errors() {
    let h = harness().await;
    let resp = post_to(
        h.addr(),
        "/v1/pipelines/nope",
        "application/json",
        r#"{"input":"x"}"#,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(
        body_json(resp).await["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nope")
    );

    let resp = send(
        h.addr(),
        Request::get("/v1/pipelines/chat")
            .header("host", "t")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "POST");

    let resp = post_to(
        h.addr(),
        "/v1/pipelines/chat",
        "text/plain",
        r#"{"input":"x"}"#,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let resp = post_to(
        h.addr(),
        "/v1/pipelines/chat",
        "application/json; charset=utf-8",
        r#"{"input":"x","stream":false}"#,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);

    let big = format!(r#"{{"input":"{}"}}"#, "x".repeat(2 << 20));
    let resp = post_to(h.addr(), "/v1/pipelines/chat", "application/json", &big).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let resp = post_to(h.addr(), "/elsewhere", "application/json", "{}").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Only the one good request reached the provider.
    assert_eq!(h.mock.journal().request_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_limit_without_content_length_is_refused_too() {
    let h = Harness::start_with(
        Script::single(Reply::text(WORDS)),
        64,
        TIMEOUTS,
        ", max_body_bytes: 1000",
    )
    .await;
    // A streamed (chunked) body: the limit is enforced while reading.
    let frames = (0..10).map(|_| {
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![b' '; 500])))
    });
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let req = Request::post("/v1/pipelines/chat")
        .header("host", "t")
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(h.mock.journal().request_count(), 0);
}

async fn post_to(
    addr: std::net::SocketAddr,
    path: &str,
    ct: &str,
    body: &str,
) -> http::Response<hyper::body::Incoming> {
    let req = Request::post(path)
        .header("host", "t")
        .header("content-type", ct)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    send(addr, req).await
}

#[tokio::test(start_paused = true)]
async fn health_and_pipeline_list() {
    let h = harness().await;
    let resp = send(
        h.addr(),
        Request::get("/healthz")
            .header("host", "t")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_json(resp).await["status"], "ok");
    let resp = send(
        h.addr(),
        Request::get("/v1/pipelines")
            .header("host", "t")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let list = body_json(resp).await;
    assert_eq!(list["pipelines"][0]["name"], "chat");
    assert_eq!(list["pipelines"][0]["route"], "/v1/pipelines/chat");
    assert_eq!(list["pipelines"][0]["max_tokens"], 64);
}

#[tokio::test(start_paused = true)]
async fn stream_headers_and_request_ids() {
    let h = harness().await;
    let mut req = post_json("/v1/pipelines/chat", r#"{"input":"hi"}"#);
    req.headers_mut()
        .insert("x-request-id", "trace-42".parse().unwrap());
    let resp = send(h.addr(), req).await;
    let hd = resp.headers().clone();
    assert_eq!(hd["content-type"], "text/event-stream");
    assert_eq!(hd["cache-control"], "no-cache");
    assert_eq!(hd["x-accel-buffering"], "no");
    assert_eq!(hd["connection"], "keep-alive");
    assert_eq!(hd["x-request-id"], "trace-42");
    let events = SseReader::new(resp).collect().await;
    assert_eq!(
        find(&events, "start").unwrap().data["request_id"],
        "trace-42"
    );

    // Without one, each response gets its own.
    let a = post(h.addr(), r#"{"input":"hi","stream":false}"#).await;
    let b = post(h.addr(), r#"{"input":"hi","stream":false}"#).await;
    let (ia, ib) = (
        a.headers()["x-request-id"].clone(),
        b.headers()["x-request-id"].clone(),
    );
    assert_ne!(ia, ib);
    assert_eq!(body_json(a).await["request_id"], ia.to_str().unwrap());
}

#[tokio::test(start_paused = true)]
async fn h2c_streams_without_connection_header() {
    let h = harness().await;
    let tcp = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    // Headers and body go out as two segments: without nodelay the second
    // waits for a delayed ACK while the paused clock runs to the body timeout.
    tcp.set_nodelay(true).unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://{}/v1/pipelines/chat", h.addr()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"input":"hi"}"#)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!resp.headers().contains_key("connection"));
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert!(body.starts_with("event: start\n"), "{body}");
    assert!(
        body.ends_with("event: done\nid: 6\ndata: {\"finish_reason\":\"stop\"}\n\n"),
        "{body}"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_short_streams_finish_and_ends_long_ones_after_the_grace() {
    // Two scripted replies: a long slow one and a short one.
    let long = Reply::text(&["x"; 60]).pace(Duration::from_secs(1));
    let short = Reply::text(WORDS).pace(Duration::from_millis(200));
    let h = Harness::start(
        Script::single(long).then(short),
        256,
        "{first_token: 5s, idle: 5s, total: 300s}",
    )
    .await;
    let addr = h.addr();
    let mut long_stream = SseReader::new(post(addr, r#"{"input":"long"}"#).await);
    assert_eq!(long_stream.next().await.unwrap().name, "start");
    let mut short_stream = SseReader::new(post(addr, r#"{"input":"short"}"#).await);
    assert_eq!(short_stream.next().await.unwrap().name, "start");

    let t0 = Instant::now();
    let Harness { mock, server } = h;
    server.signal_shutdown();
    // New connections are refused once the listener is gone.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );

    let short_events = short_stream.collect().await;
    assert_eq!(
        find(&short_events, "done").unwrap().data["finish_reason"],
        "stop"
    );
    assert!(find(&short_events, "error").is_none());

    let long_events = long_stream.collect().await;
    let err = find(&long_events, "error").expect("the long stream is ended with an error");
    assert_eq!(err.data["code"], "shutdown");
    // The grace period in the test settings is 2s.
    assert_eq!(err.at.duration_since(t0), Duration::from_secs(2));
    assert_eq!(names(&long_events).last(), Some(&"done"));
    server.wait().await;
    assert!(
        mock.journal()
            .wait_closed(0, Duration::from_secs(1))
            .await
            .is_some()
    );
}

#[tokio::test(start_paused = true)]
async fn chat_completions_speaks_openai_errors() {
    let h = harness().await;
    let post_chat = |body: &'static str| send(h.addr(), post_json("/v1/chat/completions", body));
    let resp = post_chat(r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body = body_json(resp).await;
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], "model");

    let resp = post_chat(r#"{"model":"chat","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        body_json(resp).await["error"]["param"],
        "tools[0].function.name"
    );

    let resp = post_chat(r#"{"model":"chat","messages":[{"role":"tool","content":"x"}]}"#).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        body_json(resp).await["error"]["param"],
        "messages[0].tool_call_id"
    );

    // OpenAI's own refusal, in its shape and words.
    let resp = post_chat(r#"{"model":"chat","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        body_json(resp).await,
        serde_json::json!({"error": {
            "message": "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "type": "invalid_request_error", "param": "stream_options", "code": null,
        }})
    );

    let resp = post_chat(r#"{"model":"chat","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_tokens":5}"#).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = body_json(resp).await;
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "One two three");
    assert_eq!(
        h.mock.journal().requests()[0].body["max_tokens"],
        5,
        "the ceiling and clamping apply"
    );
}

#[tokio::test(start_paused = true)]
async fn refused_requests_to_a_pipeline_have_ledger_rows_too() {
    let h = harness().await;
    assert_eq!(
        post(h.addr(), r#"{"messages":[]}"#).await.status(),
        StatusCode::BAD_REQUEST
    );
    let resp = send(
        h.addr(),
        Request::post("/v1/pipelines/chat")
            .header("host", "t")
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"hi")))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let rows = h.server.ledger().rows_since(0).await.unwrap();
    let seen: Vec<(&str, Option<&str>)> = rows
        .iter()
        .map(|r| (r.status.as_str(), r.error_code.as_deref()))
        .collect();
    assert_eq!(seen.len(), 2, "{rows:#?}");
    assert!(seen.contains(&("invalid_request", Some("invalid_request"))));
    assert!(seen.contains(&("invalid_request", Some("unsupported_media_type"))));
    assert!(
        rows.iter()
            .all(|r| r.pipeline == "chat" && r.cost_micros == 0)
    );
    assert_eq!(h.mock.journal().request_count(), 0);
}
