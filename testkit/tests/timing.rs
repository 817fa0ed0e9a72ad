//! Recorded timing and speed, composed faults, the in-stream error event,
//! and the journal's answers (request bodies, what was sent before the
//! client closed, how long after a deadline it closed).

mod common;

use std::time::Duration;

use common::{Client, T, events_of};
use serde_json::json;
use sluice_testkit::{Fault, MockProvider, Recording, Reply, Script, Timing, Wire};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

/// Arrival time of each chunk (since the request) and the body.
async fn timed_chunks(mock: &MockProvider, path: &str) -> (Duration, Vec<Duration>, Vec<u8>) {
    let mut c = Client::connect(mock.addr()).await;
    let t0 = Instant::now();
    c.post(path, &common::chat_body(true)).await;
    c.read_head().await.unwrap();
    let head = t0.elapsed();
    let mut times = Vec::new();
    let mut body = Vec::new();
    while let Some(chunk) = c.read_chunk().await.unwrap() {
        times.push(t0.elapsed());
        body.extend_from_slice(&chunk);
    }
    (head, times, body)
}

fn timing() -> Timing {
    Timing {
        headers: Duration::from_millis(200),
        events: vec![
            Duration::from_millis(400),
            Duration::from_millis(50),
            Duration::from_millis(3000),
            Duration::from_millis(10),
        ],
    }
}

#[tokio::test(start_paused = true)]
async fn recorded_timing_is_replayed_per_event_and_speed_scales_it() {
    let words = ["a", "b", "c"]; // 6 events: role, 3 words, stop, usage, [DONE] -> 7
    for (speed, factor) in [(1.0, 1.0), (2.0, 0.5), (0.25, 4.0)] {
        let reply = Reply::text(&words).timing(timing()).speed(speed);
        let mock = MockProvider::start(Script::single(reply)).await.unwrap();
        let (head, times, _) = timed_chunks(&mock, "/v1/chat/completions").await;
        let scaled = |ms: u64| Duration::from_secs_f64(ms as f64 * factor / 1000.0);
        assert!(head >= scaled(200) && head < scaled(200) + MS, "{head:?}");
        // Events past the recorded timing use the pace (zero here).
        let expected: Vec<Duration> = [600, 650, 3650, 3660, 3660, 3660, 3660]
            .into_iter()
            .map(scaled)
            .collect();
        assert_eq!(times.len(), expected.len());
        for (i, (t, e)) in times.iter().zip(&expected).enumerate() {
            assert!(
                *t >= *e && *t < *e + MS,
                "speed {speed}: event {i} at {t:?}, expected {e:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn pace_replaces_recorded_timing_and_truncate_keeps_the_rest_on_time() {
    let reply = Reply::text(&["a"])
        .timing(timing())
        .pace(Duration::from_millis(100));
    assert_eq!(reply.event_delay(0), Duration::from_millis(100));
    assert_eq!(reply.headers_delay(), Duration::from_millis(200));
    // Truncate drops the usage chunk and [DONE]; an OmitUsage drop moves
    // its delay to the next event sent.
    let mut t = timing();
    t.events = vec![MS * 10, MS * 10, MS * 10, MS * 500, MS * 7];
    let reply = Reply::text(&["a", "b"]).timing(t);
    let mock = MockProvider::start(Script::single(reply.fault(Fault::OmitUsage)))
        .await
        .unwrap();
    let (_, times, body) = timed_chunks(&mock, "/v1/chat/completions").await;
    assert_eq!(times.len(), 5, "{}", String::from_utf8_lossy(&body));
    // role 210, a 220, b 230, stop 730; the usage chunk is dropped, so
    // [DONE] comes after its 7 ms plus its own slot's (past the timing: 0).
    let want = [210, 220, 230, 730, 737];
    for (t, w) in times.iter().zip(want) {
        assert!(*t >= MS * w && *t < MS * w + MS, "{times:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_recording_loads_with_its_sidecar() {
    let dir = std::env::temp_dir().join(format!("testkit-rec-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("openai")).unwrap();
    let body = dir.join("openai/x.sse");
    std::fs::write(&body, "data: {\"choices\":[]}\n\ndata: [DONE]\n\n").unwrap();
    std::fs::write(Timing::sidecar_path(&body), "headers 5\n10\n20\n").unwrap();
    let rec = Recording::load(&body).unwrap();
    assert_eq!(rec.wire, Wire::OpenAi);
    assert_eq!(rec.timing.as_ref().unwrap().events, vec![MS * 10, MS * 20]);
    let reply = Reply::recording(&body).unwrap();
    assert_eq!(reply.headers_delay(), MS * 5);
    // A sidecar that does not match is reported with its file and line.
    std::fs::write(Timing::sidecar_path(&body), "10\n").unwrap();
    let err = Recording::load(&body).unwrap_err();
    assert!(
        err.to_string()
            .contains("x.sse.timing:1: error: timing has 1 event delays but"),
        "{err}"
    );
    std::fs::write(&body, "data: {\"choices\":[]}\n\ndata: {oops}\n\n").unwrap();
    let err = Recording::load(&body).unwrap_err();
    assert!(
        err.to_string()
            .contains("x.sse:3: error: openai chunk data is not JSON"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(start_paused = true)]
async fn faults_compose_slow_pace_fragments_and_a_stall() {
    let pace = Duration::from_millis(200);
    let reply = Reply::fixture("openai/text_stop.sse")
        .pace(pace)
        .fault(Fault::Fragment(9))
        .fault(Fault::StallAfter {
            events: 10,
            duration: Some(Duration::from_secs(60)),
        })
        .fault(Fault::OmitUsage);
    let mock = MockProvider::start(Script::single(reply)).await.unwrap();
    let (_, times, body) = timed_chunks(&mock, "/v1/chat/completions").await;
    let events = events_of(&body);
    assert_eq!(events.len(), 33, "usage chunk dropped");
    assert!(body.len() > 9 * 33, "fragmented");
    // 10 paced events, a minute of silence, 23 more paced events.
    let end = *times.last().unwrap();
    let want = pace * 33 + Duration::from_secs(60);
    assert!(end >= want && end < want + MS * 5, "{end:?}");
}

#[tokio::test(start_paused = true)]
async fn the_in_stream_error_event_follows_the_wire() {
    let script =
        Script::single(Reply::anthropic_text(&["a", "b"]).fault(Fault::ErrorEventAfter(4)));
    let mock = MockProvider::start(script).await.unwrap();
    let (_, _, body) = timed_chunks(&mock, "/v1/messages").await;
    let events = events_of(&body);
    assert_eq!(events.len(), 5);
    assert!(events[4].starts_with(
        "event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\""
    ));
    assert!(!String::from_utf8_lossy(&body).contains("message_stop"));
    let (_, _, body) = timed_chunks(&mock, "/v1/chat/completions").await;
    let events = events_of(&body);
    assert!(
        events[4].starts_with("data: {\"error\":{\"message\""),
        "{events:?}"
    );
    assert_eq!(mock.journal().requests()[0].events_sent, 5);
}

#[tokio::test(start_paused = true)]
async fn the_journal_answers_what_was_asked_sent_and_when_it_closed() {
    let reply = Reply::text(&["a", "b", "c"])
        .pace(Duration::from_millis(100))
        .fault(Fault::StallAfter {
            events: 3,
            duration: None,
        });
    let mock = MockProvider::start(Script::single(reply)).await.unwrap();
    let journal = mock.journal();
    let mut c = Client::connect(mock.addr()).await;
    let body = json!({
        "model": "m",
        "stream": true,
        "max_tokens": 64,
        "stream_options": {"include_usage": true},
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "tool_calls": [{"id": "call_1"}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true,
                 "content": [{"type": "text", "text": "no such city"}]}
            ]}
        ],
    });
    c.post("/v1/chat/completions", &body).await;
    c.read_head().await.unwrap();
    for _ in 0..3 {
        c.read_chunk().await.unwrap();
    }
    // The mock is now silent; an "idle deadline" of 1 s passes, then the
    // client leaves 30 ms late.
    let rec = journal.request(0).unwrap();
    let deadline = rec.idle_deadline(Duration::from_secs(1)).unwrap();
    tokio::time::sleep_until(deadline + MS * 30).await;
    drop(c);
    let after = journal.wait_closed_after(0, deadline, T).await.unwrap();
    assert_eq!(after, MS * 30);
    let rec = journal.request(0).unwrap();
    assert_eq!(rec.closed_after(deadline), Some(MS * 30));
    assert_eq!(rec.closed_before(deadline), None);
    assert_eq!(rec.max_tokens(), Some(64));
    assert!(rec.include_usage());
    assert!(rec.streamed());
    assert_eq!(
        rec.body_at("messages.2.tool_call_id"),
        Some(&json!("call_1"))
    );
    let results = rec.tool_results();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].id, "call_1");
    assert_eq!(results[0].content, "{\"temp\": 21}");
    assert!(!results[0].is_error);
    assert_eq!(results[1].id, "toolu_2");
    assert_eq!(results[1].content, "no such city");
    assert!(results[1].is_error);
    let sent = rec.sent_before_close().unwrap();
    assert_eq!(sent.events, 3);
    assert_eq!(sent.bytes, rec.bytes_sent);
    assert!(sent.bytes > 100);
}
