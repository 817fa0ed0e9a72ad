//! Black-box tests of what one client connection may hold and how many
//! there may be: header, body and idle timeouts (HTTP/1.1 and h2c), and
//! the connection cap with its reserve for health checks. All on tokio's
//! paused clock, so every deadline is checked to the millisecond.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_testkit::{Reply, Script};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

const HEADER: Duration = Duration::from_secs(5);
const BODY: Duration = Duration::from_secs(8);
const IDLE: Duration = Duration::from_secs(20);
const CAP: usize = 32;
const RESERVED: usize = 8;
/// How late a deadline may act: the paused clock makes it exact, this
/// only covers the steps of the test's own loop.
const SLACK: Duration = Duration::from_millis(50);

async fn harness_with(script: Script, timeouts: &str) -> Harness {
    let limits = format!(
        ", header_timeout: {}s, body_timeout: {}s, idle_timeout: {}s, max_connections: {CAP}, reserved_connections: {RESERVED}",
        HEADER.as_secs(),
        BODY.as_secs(),
        IDLE.as_secs()
    );
    Harness::start_with(script, 64, timeouts, &limits).await
}

async fn harness() -> Harness {
    harness_with(Script::single(Reply::text(&["One", " two"])), TIMEOUTS).await
}

/// A client socket. Without `TCP_NODELAY` a second small write waits for
/// the first one's (delayed) ACK: real time the paused clock does not see,
/// so it would jump to the next deadline meanwhile.
async fn dial(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s
}

fn assert_at(what: &str, at: Instant, expected: Instant) {
    assert!(
        at >= expected && at <= expected + SLACK,
        "{what}: expected at {:?}, was at {:?}",
        expected.elapsed(),
        at.elapsed()
    );
}

/// Waits until the server closes `s` (EOF or reset), discarding what it
/// sends, and returns when. Panics if it is still open after a minute.
async fn closed_at(s: &mut TcpStream) -> Instant {
    let mut buf = [0u8; 4096];
    let closed = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    };
    timeout(Duration::from_secs(60), closed)
        .await
        .expect("the server closes the connection")
}

/// Whether the server has closed `s`, without waiting for anything else.
async fn is_closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(
        timeout(Duration::from_millis(1), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Sends `bytes` one at a time, `every` apart, until the server closes the
/// connection; returns when it did. Panics if all bytes were sent.
async fn drip(s: &mut TcpStream, bytes: &[u8], every: Duration) -> Instant {
    let mut buf = [0u8; 4096];
    for b in bytes {
        if s.write_all(&[*b]).await.is_err() {
            return Instant::now();
        }
        let wait = sleep(every);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                r = s.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return Instant::now(),
                    Ok(_) => {}
                },
                () = &mut wait => break,
            }
        }
    }
    panic!("the connection stayed open for all {} bytes", bytes.len());
}

/// A whole HTTP/1.1 response with a `Content-Length` body.
struct RawResponse {
    status: u16,
    head: String,
    body: serde_json::Value,
}

/// Reads one response; panics if none comes within a minute.
async fn read_response(s: &mut TcpStream) -> RawResponse {
    timeout(Duration::from_secs(60), read_response_unbounded(s))
        .await
        .expect("a response")
}

async fn read_response_unbounded(s: &mut TcpStream) -> RawResponse {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed before a response: {data:?}");
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(data[..head_end].to_vec()).expect("ascii head");
    let status = head[9..12].parse().expect("status code");
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("content-length");
    while data.len() < head_end + len {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed inside the body");
        data.extend_from_slice(&buf[..n]);
    }
    let body = serde_json::from_slice(&data[head_end..head_end + len]).expect("JSON body");
    RawResponse { status, head, body }
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: sluice.test\r\n\r\n";

async fn healthz_on(s: &mut TcpStream) -> RawResponse {
    s.write_all(HEALTHZ).await.expect("write");
    read_response(s).await
}

#[tokio::test(start_paused = true)]
async fn a_head_sent_byte_by_byte_is_closed_at_the_header_timeout() {
    let h = harness().await;
    let head = b"POST /v1/pipelines/chat HTTP/1.1\r\nhost: sluice.test\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";

    // A new connection: the first head is due within the timeout of the accept.
    let mut s = dial(h.addr()).await;
    let t0 = Instant::now();
    let closed = drip(&mut s, head, Duration::from_secs(1)).await;
    assert_at("first head", closed, t0 + HEADER);

    // On a keep-alive connection the clock starts at the next head's first
    // byte, not when the connection went idle.
    let mut s = dial(h.addr()).await;
    assert_eq!(healthz_on(&mut s).await.status, 200);
    sleep(Duration::from_secs(3)).await;
    let first_byte = Instant::now();
    let closed = drip(&mut s, head, Duration::from_secs(1)).await;
    assert_at("second head", closed, first_byte + HEADER);
}

#[tokio::test(start_paused = true)]
async fn an_h2_connection_that_never_opens_a_stream_is_closed_at_the_header_timeout() {
    let h = harness().await;
    let mut s = dial(h.addr()).await;
    let t0 = Instant::now();
    // The client preface, an empty SETTINGS frame, then a HEADERS frame
    // header that trickles in.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let closed = drip(
        &mut s,
        b"\0\0\x10\x01\x04\0\0\0\x01xxxxxxxxxxxxxxxx",
        Duration::from_secs(1),
    )
    .await;
    assert_at("h2 first stream", closed, t0 + HEADER);
}

fn unfinished_head(framing: &str) -> String {
    format!(
        "POST /v1/pipelines/chat HTTP/1.1\r\nhost: sluice.test\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
    )
}

#[tokio::test(start_paused = true)]
async fn a_body_shorter_than_its_content_length_gets_408_at_the_body_timeout() {
    let h = harness().await;
    let mut s = dial(h.addr()).await;
    s.write_all(unfinished_head("content-length: 1000").as_bytes())
        .await
        .unwrap();
    let t0 = Instant::now();
    s.write_all(br#"{"input": "#).await.unwrap();
    let resp = read_response(&mut s).await;
    assert_at("408", Instant::now(), t0 + BODY);
    assert_eq!(resp.status, 408);
    assert_eq!(resp.body["error"]["code"], "request_timeout");
    let message = resp.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("8s (body_timeout)"), "{message}");
    // The rest of the body will never be read: the connection ends.
    assert_at("close", closed_at(&mut s).await, t0 + BODY);
    // Nothing reached the provider.
    assert!(h.mock.journal().requests().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_chunked_body_that_never_ends_gets_408_at_the_body_timeout_however_it_trickles() {
    let h = harness().await;
    let mut s = dial(h.addr()).await;
    s.write_all(unfinished_head("transfer-encoding: chunked").as_bytes())
        .await
        .unwrap();
    let t0 = Instant::now();
    // A chunk of JSON whitespace every second: always some progress, never
    // an end. The deadline is for the whole body, not per read.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = loop {
        s.write_all(b"1\r\n \r\n").await.unwrap();
        match timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(n)) if n > 0 => {
                seen.extend_from_slice(&buf[..n]);
                break Instant::now();
            }
            Ok(r) => panic!("closed without an answer: {r:?}"),
        }
        assert!(t0.elapsed() < BODY * 2, "still reading the body");
    };
    assert_at("408", answered, t0 + BODY);
    assert!(seen.starts_with(b"HTTP/1.1 408 "), "{seen:?}");
    closed_at(&mut s).await;
}

/// A request body that sends one chunk and then never ends.
struct Unending(Option<Bytes>);

impl http_body::Body for Unending {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut().0.take() {
            Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
            None => Poll::Pending,
        }
    }
}

async fn h2_client<B>(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<()>,
)
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = dial(addr).await;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, conn)
}

#[tokio::test(start_paused = true)]
async fn an_h2_stream_whose_body_never_ends_gets_408_at_the_body_timeout() {
    let h = harness().await;
    let (mut sender, _conn) = h2_client(h.addr()).await;
    let req = Request::post(format!("http://{}/v1/chat/completions", h.addr()))
        .header("content-type", "application/json")
        .body(Unending(Some(Bytes::from_static(b"{\"model\": "))))
        .unwrap();
    let t0 = Instant::now();
    let resp = timeout(Duration::from_secs(60), sender.send_request(req))
        .await
        .expect("an answer")
        .unwrap();
    assert_at("408", Instant::now(), t0 + BODY);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("body_timeout"),
        "{body}"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_keep_alive_connections_are_closed_at_the_idle_timeout() {
    let h = harness().await;

    // HTTP/1.1: the clock starts when the last response is sent.
    let mut s = dial(h.addr()).await;
    assert_eq!(healthz_on(&mut s).await.status, 200);
    sleep(Duration::from_secs(7)).await;
    assert_eq!(healthz_on(&mut s).await.status, 200);
    let idle_from = Instant::now();
    assert_at("h1 idle", closed_at(&mut s).await, idle_from + IDLE);

    // h2: pings and settings do not keep a connection with no stream open.
    let (mut sender, conn) = h2_client::<Empty<Bytes>>(h.addr()).await;
    let req = Request::get(format!("http://{}/healthz", h.addr()))
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();
    let idle_from = Instant::now();
    timeout(Duration::from_secs(60), conn)
        .await
        .expect("the server closes the connection")
        .unwrap();
    assert_at("h2 idle", Instant::now(), idle_from + IDLE);
}

#[tokio::test(start_paused = true)]
async fn a_stream_longer_than_the_idle_timeout_is_not_cut() {
    let slow = Reply::text(&["x"; 30]).pace(Duration::from_secs(1));
    let h = harness_with(
        Script::single(slow),
        "{first_token: 5s, idle: 5s, total: 300s}",
    )
    .await;
    let t0 = Instant::now();
    let mut stream = SseReader::new(post(h.addr(), r#"{"input":"long"}"#).await);
    let events = stream.collect().await;
    assert!(t0.elapsed() > IDLE + Duration::from_secs(5));
    assert_eq!(text(&events), "x".repeat(30));
    assert_eq!(names(&events).last(), Some(&"done"));
}

#[tokio::test(start_paused = true)]
async fn twice_the_cap_of_idle_sockets_leaves_health_checks_answering() {
    let h = harness().await;
    let addr = h.addr();
    let t0 = Instant::now();
    // The cap's worth of keep-alive connections, each idle after one request.
    let mut kept = Vec::new();
    for _ in 0..CAP {
        let mut s = dial(addr).await;
        assert_eq!(healthz_on(&mut s).await.status, 200);
        kept.push(s);
    }
    // As many again that never send a byte: the reserve takes them, and
    // makes room for newer ones by closing its oldest.
    let mut silent = Vec::new();
    for _ in 0..CAP {
        silent.push(dial(addr).await);
    }
    sleep(Duration::from_millis(100)).await;
    let mut open = 0;
    for s in &mut silent {
        open += usize::from(!is_closed(s).await);
    }
    assert_eq!(open, RESERVED, "the reserve holds the newest {RESERVED}");
    for s in &mut kept {
        assert!(!is_closed(s).await, "a served connection was closed");
    }

    // Every second until the served connections go idle: health checks
    // are answered (and their connection closed), anything else is
    // refused with 503 at once, never left waiting.
    while t0.elapsed() < IDLE - Duration::from_secs(1) {
        let mut s = dial(addr).await;
        let health = timeout(SECOND, healthz_on(&mut s)).await.expect("answered");
        assert_eq!(health.status, 200);
        assert!(
            health
                .head
                .to_ascii_lowercase()
                .contains("connection: close"),
            "{}",
            health.head
        );
        closed_at(&mut s).await;

        let refused = timeout(SECOND, post(addr, r#"{"input":"hi"}"#))
            .await
            .expect("answered");
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()["retry-after"], "1");
        let body = body_json(refused).await;
        assert_eq!(body["error"]["code"], "over_capacity");
        sleep(SECOND).await;
    }
    assert!(
        h.mock.journal().requests().is_empty(),
        "a refused request reached the provider"
    );

    // Once the idle ones are closed, requests are served again.
    sleep(IDLE).await;
    for s in kept.iter_mut().chain(&mut silent) {
        assert!(
            is_closed(s).await,
            "an idle connection outlived the timeouts"
        );
    }
    let events = SseReader::new(post(addr, r#"{"input":"hi"}"#).await)
        .collect()
        .await;
    assert_eq!(text(&events), "One two");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_dropped_at_the_write_timeout() {
    const WRITE: Duration = Duration::from_secs(12);
    let limits = format!(
        ", write_timeout: {}s, max_connections: {CAP}, reserved_connections: {RESERVED}",
        WRITE.as_secs()
    );
    // An endless stream, far from any ceiling: only the client holds it back.
    let h = Harness::start_with(
        Script::single(Reply::flood(" lorem")),
        1_000_000,
        "{first_token: 5s, idle: 5s, total: 600s}",
        &limits,
    )
    .await;
    // A small receive window so that the server's writes back up early.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut s = socket.connect(h.addr()).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let body = r#"{"input":"hi"}"#;
    s.write_all(
        format!(
            "POST /v1/pipelines/chat HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("request sent");
    let t0 = Instant::now();
    // Reads nothing until well past the write timeout.
    sleep(WRITE * 3).await;
    // The server gave up on the socket: what it had queued can still be
    // read, then the connection ends.
    closed_at(&mut s).await;
    let rows = h.server.ledger().rows_since(0).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "client_closed", "{:?}", rows[0]);
    let took = Duration::from_millis(rows[0].duration_ms.unwrap_or(0) as u64);
    assert!(
        took >= WRITE && took <= WRITE + SLACK,
        "settled {took:?} after the request, the write timeout is {WRITE:?}"
    );
    let metrics = send(
        h.addr(),
        Request::get("/metrics")
            .header("host", "t")
            .body(Default::default())
            .unwrap(),
    )
    .await;
    let metrics = String::from_utf8(
        metrics
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        metrics.contains(r#"sluice_connections_closed_total{reason="write_timeout"} 1"#),
        "{metrics}"
    );
    assert!(t0.elapsed() >= WRITE);
}
