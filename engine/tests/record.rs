//! `sluice record` end to end, on tokio's paused clock: a paced stream from
//! the testkit mock recorded through the proxy is saved byte-exact with its
//! timing, and replaying the saved files gives the client the same bytes at
//! the same (virtual) times.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sluice::scenario::record::Recorder;
use sluice_testkit::{MockProvider, Recording, Reply, Script, Timing, fixtures_dir};
use tokio::net::TcpStream;
use tokio::time::Instant;

const LONG: Duration = Duration::from_secs(600);

/// What a client saw: the body, and when each event had fully arrived
/// (since the request was sent), plus when the headers came.
struct Seen {
    body: Vec<u8>,
    headers_after: Duration,
    event_times: Vec<Duration>,
}

/// POSTs a streaming chat request to `addr` + `path` and reads the answer.
async fn fetch(addr: SocketAddr, path: &str, auth: (&str, &str)) -> Seen {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let body = r#"{"model":"m","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
    let req = Request::post(path)
        .header("host", "recorder.test")
        .header("content-type", "application/json")
        .header("connection", "keep-alive")
        .header(auth.0, auth.1)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let t0 = Instant::now();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let headers_after = t0.elapsed();
    let mut body = resp.into_body();
    let mut seen = Seen {
        body: Vec::new(),
        headers_after,
        event_times: Vec::new(),
    };
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.unwrap().into_data() else {
            continue;
        };
        let before = complete_events(&seen.body);
        seen.body.extend_from_slice(&data);
        let now = t0.elapsed();
        for _ in before..complete_events(&seen.body) {
            seen.event_times.push(now);
        }
    }
    // A last event without its blank line ends with the body.
    let total = Recording::parse(Path::new("seen"), &seen.body, None)
        .unwrap()
        .events
        .len();
    while seen.event_times.len() < total {
        seen.event_times.push(t0.elapsed());
    }
    conn.abort();
    seen
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("utf-8 body")
}

/// Events terminated by a blank line so far.
fn complete_events(body: &[u8]) -> usize {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    let mut n = 0;
    let mut content = false;
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') {
            break;
        }
        if line == "\n" {
            if content {
                n += 1;
            }
            content = false;
        } else {
            content = true;
        }
    }
    n
}

/// An uneven timing profile for `events` events: slow first token, a 3 s
/// pause at `pause_at`, 15-60 ms between the other events.
fn profile(events: usize, pause_at: usize) -> Timing {
    let mut t = Timing {
        headers: Duration::from_millis(180),
        events: Vec::new(),
    };
    for i in 0..events {
        let ms = match i {
            0 => 420,
            i if i == pause_at => 3000,
            i => 15 + (i as u64 * 37) % 46,
        };
        t.events.push(Duration::from_millis(ms));
    }
    t
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-record-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn assert_close(a: &[Duration], b: &[Duration], slack: Duration) {
    assert_eq!(a.len(), b.len(), "event counts differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let diff = if x > y { *x - *y } else { *y - *x };
        assert!(diff <= slack, "event {i}: {x:?} vs {y:?}");
    }
}

/// Records `fixture` (played with `timing`) through the proxy into `out`;
/// returns what the client saw through the proxy.
async fn record(fixture: &str, timing: &Timing, route: &str, out: &Path) -> Seen {
    let mock = MockProvider::start(Script::single(
        Reply::fixture(fixture).timing(timing.clone()),
    ))
    .await
    .unwrap();
    let recorder = Recorder::start(
        &format!("http://{}", mock.addr()),
        out,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let seen = fetch(
        recorder.addr(),
        &format!("/v1{route}"),
        ("authorization", "Bearer sk-client"),
    )
    .await;
    let saved = recorder.wait_saved(1, LONG).await.expect("a recording");
    assert_eq!(saved[0].file.as_deref(), Some(out), "{saved:?}");
    assert_eq!(saved[0].status, 200);
    // The request reached the provider as the client sent it.
    let req = &mock.journal().requests()[0];
    assert_eq!(req.path, format!("/v1{route}"));
    assert_eq!(req.header("authorization"), Some("Bearer sk-client"));
    assert_eq!(req.header("host"), Some(mock.addr().to_string().as_str()));
    assert_eq!(req.header("connection"), None);
    assert_eq!(req.max_tokens(), Some(64));
    seen
}

#[tokio::test(start_paused = true)]
async fn a_recorded_stream_replays_with_the_same_bytes_and_timing() {
    let fixture = "openai/text_stop.sse";
    let original = Reply::fixture(fixture);
    let sluice_testkit::Body::Events(events) = &original.body else {
        panic!("a recorded body")
    };
    let timing = profile(events.len(), 15);
    let dir = temp_dir("roundtrip");
    let out = dir.join("rec.sse");

    // Directly from the mock, as the reference.
    let mock = MockProvider::start(Script::single(original.clone().timing(timing.clone())))
        .await
        .unwrap();
    let direct = fetch(
        mock.addr(),
        "/v1/chat/completions",
        ("authorization", "Bearer x"),
    )
    .await;
    drop(mock);

    let proxied = record(fixture, &timing, "/chat/completions", &out).await;
    let file = std::fs::read_to_string(fixtures_dir().join(fixture)).unwrap();
    let saved_body = std::fs::read_to_string(&out).unwrap();
    assert_eq!(saved_body, file, "saved body is byte-exact");
    assert_eq!(
        text(&proxied.body),
        file,
        "the client got the body through the proxy"
    );
    let rec = Recording::load(&out).expect("the recording and its timing load");
    let saved = rec.timing.clone().expect("a timing sidecar");
    assert_eq!(saved.events.len(), events.len());
    assert_close(&saved.events, &timing.events, Duration::from_millis(2));
    assert_close(
        &[saved.headers],
        &[timing.headers],
        Duration::from_millis(2),
    );

    // Replaying the saved files gives the same bytes at the same times.
    let mock = MockProvider::start(Script::single(rec.reply()))
        .await
        .unwrap();
    let replayed = fetch(
        mock.addr(),
        "/v1/chat/completions",
        ("authorization", "Bearer x"),
    )
    .await;
    assert_eq!(text(&replayed.body), file);
    assert_close(
        &[replayed.headers_after],
        &[direct.headers_after],
        Duration::from_millis(3),
    );
    assert_close(
        &replayed.event_times,
        &direct.event_times,
        Duration::from_millis(3),
    );
    assert_close(
        &proxied.event_times,
        &direct.event_times,
        Duration::from_millis(3),
    );
    // About 4.6 s of recorded time, replayed in virtual time.
    let last = *replayed.event_times.last().unwrap();
    assert!(last > Duration::from_secs(4), "{last:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(start_paused = true)]
async fn an_anthropic_stream_without_a_final_blank_line_is_recorded_whole() {
    let dir = temp_dir("anthropic");
    let out = dir.join("msg.sse");
    let timing = profile(9, 4);
    record("anthropic/text.sse", &timing, "/messages", &out).await;
    // The mock completes the last event with its blank line, and the
    // recorder keeps what was sent.
    let mut sent = std::fs::read_to_string(fixtures_dir().join("anthropic/text.sse")).unwrap();
    assert!(!sent.ends_with("\n\n"));
    sent.push_str("\n\n");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), sent);
    let rec = Recording::load(&out).unwrap();
    assert_eq!(rec.wire, sluice_testkit::Wire::Anthropic);
    assert_close(
        &rec.timing.unwrap().events,
        &timing.events,
        Duration::from_millis(2),
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(start_paused = true)]
async fn an_error_answer_is_passed_on_and_not_saved() {
    let mock = MockProvider::start(Script::single(Reply::text(&["a"]).fault(
        sluice_testkit::Fault::Status {
            status: 429,
            retry_after: Some(3),
        },
    )))
    .await
    .unwrap();
    let dir = temp_dir("error");
    let out = dir.join("x.sse");
    let recorder = Recorder::start(
        &format!("http://{}", mock.addr()),
        &out,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let tcp = TcpStream::connect(recorder.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::post("/v1/chat/completions")
        .header("host", "r")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"stream\":true}")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "3");
    let saved = recorder.wait_saved(1, LONG).await.unwrap();
    assert_eq!(saved[0].file, None);
    assert!(saved[0].note.as_deref().unwrap().contains("not recorded"));
    assert!(!out.exists());
    conn.abort();
    let _ = std::fs::remove_dir_all(dir);
}

/// Regenerates `fixtures/recorded/{openai/text_stop,anthropic/text}_timed.sse`:
/// the real bodies re-recorded through `sluice record` from the mock playing
/// the timing profile above (a 3 s pause mid-answer).
#[tokio::test(start_paused = true)]
#[ignore = "rewrites fixtures/recorded/*_timed.sse; run with --ignored to regenerate them"]
async fn regenerate_timed_fixtures() {
    for (fixture, events, pause, route, out) in [
        (
            "openai/text_stop.sse",
            34,
            15,
            "/chat/completions",
            "openai/text_stop_timed.sse",
        ),
        (
            "anthropic/text.sse",
            9,
            4,
            "/messages",
            "anthropic/text_timed.sse",
        ),
    ] {
        let out = fixtures_dir().join(out);
        record(fixture, &profile(events, pause), route, &out).await;
        Recording::load(&out).unwrap();
    }
}
