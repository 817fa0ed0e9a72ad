//! `sluice mock` end to end: the binary on 127.0.0.1:0, read like a client
//! reads it. Timing checks are lower bounds only (a loaded machine can only
//! make things later); every wait has a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Mock {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sluice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("mock");
    cmd
}

fn start(args: &[&str]) -> Mock {
    let mut child = sluice()
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sluice mock starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("the first line is the address, got {line:?}"));
    Mock { child, addr }
}

/// A response: status, lower-cased headers, the body's bytes (dechunked),
/// whether the body ended with its last chunk, and when each piece of the
/// body arrived (from the request's sending).
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    complete: bool,
    /// (offset in `body` at which a read ended, when).
    arrivals: Vec<(usize, Duration)>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of the SSE events.
    fn data(&self) -> Vec<String> {
        sse_data(&self.body)
    }

    fn json_events(&self) -> Vec<Value> {
        self.data()
            .iter()
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect()
    }

    /// When the byte at `offset` had arrived.
    fn arrived(&self, offset: usize) -> Duration {
        self.arrivals
            .iter()
            .find(|(end, _)| *end > offset)
            .map(|(_, t)| *t)
            .expect("offset within the body")
    }
}

fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_owned)
        })
        .collect()
}

/// POSTs `body` to `path` and reads the answer until it ends, or until
/// nothing has come for `silence` (then `complete` is false).
fn post(addr: SocketAddr, path: &str, body: &Value, silence: Duration) -> Response {
    let body = body.to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(silence)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_response(&mut s, Instant::now())
}

fn get(addr: SocketAddr, path: &str) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: mock\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    read_response(&mut s, Instant::now())
}

fn read_response(s: &mut TcpStream, sent: Instant) -> Response {
    let mut raw = Vec::new();
    let mut reads = Vec::new();
    let mut buf = [0u8; 16384];
    let deadline = sent + Duration::from_secs(30);
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                reads.push((raw.len(), sent.elapsed()));
            }
        }
        assert!(Instant::now() < deadline, "the answer took over 30s");
    }
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked");
    let mut body = Vec::new();
    let mut arrivals = Vec::new();
    let mut complete = !chunked;
    if chunked {
        // Dechunk, mapping raw offsets of reads to body offsets.
        let mut pos = head_end;
        while let Some(eol) = raw[pos..].windows(2).position(|w| w == b"\r\n") {
            let size_text = String::from_utf8_lossy(&raw[pos..pos + eol]).into_owned();
            let size = usize::from_str_radix(size_text.trim(), 16).unwrap();
            pos += eol + 2;
            if size == 0 {
                complete = true;
                break;
            }
            if raw.len() < pos + size {
                break;
            }
            body.extend_from_slice(&raw[pos..pos + size]);
            let at = reads.iter().find(|(end, _)| *end >= pos + size).unwrap().1;
            arrivals.push((body.len(), at));
            pos += size + 2;
        }
    } else {
        body.extend_from_slice(&raw[head_end..]);
        arrivals.push((body.len(), reads.last().map_or(Duration::ZERO, |r| r.1)));
    }
    Response {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
        complete,
        arrivals,
    }
}

const WAIT: Duration = Duration::from_secs(10);

fn chat(include_usage: bool) -> Value {
    json!({"model": "m", "stream": true, "stream_options": {"include_usage": include_usage},
           "messages": [{"role": "user", "content": "hi"}]})
}

fn messages() -> Value {
    json!({"model": "m", "stream": true, "max_tokens": 1000,
           "messages": [{"role": "user", "content": "hi"}]})
}

fn usage_of(r: &Response) -> Option<Value> {
    r.json_events()
        .into_iter()
        .rev()
        .find_map(|e| e.get("usage").filter(|u| !u.is_null()).cloned())
}

fn content(r: &Response) -> String {
    content_of(&r.json_events())
}

fn content_of(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| {
            e.pointer("/choices/0/delta/content")
                .or_else(|| e.pointer("/delta/text"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

#[test]
fn both_wires_with_usage_as_a_real_provider_reports_it() {
    let m = start(&["--tokens", "5"]);
    let with = post(m.addr, "/v1/chat/completions", &chat(true), WAIT);
    assert_eq!(with.status, 200);
    assert_eq!(with.header("content-type"), Some("text/event-stream"));
    assert!(with.complete);
    assert_eq!(with.data().last().map(String::as_str), Some("[DONE]"));
    assert_eq!(content(&with), " the quick brown fox jumps");
    let usage = usage_of(&with).expect("a usage chunk when include_usage is set");
    assert_eq!(usage["completion_tokens"], 5);
    // Without include_usage, OpenAI sends no usage chunk.
    let without = post(m.addr, "/v1/chat/completions", &chat(false), WAIT);
    assert_eq!(content(&without), content(&with));
    assert_eq!(usage_of(&without), None);
    assert_eq!(without.data().len(), with.data().len() - 1);
    // Anthropic: always, in message_delta.
    let a = post(m.addr, "/v1/messages", &messages(), WAIT);
    assert_eq!(a.status, 200);
    assert_eq!(content(&a), " the quick brown fox jumps");
    let types: Vec<String> = a
        .json_events()
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(types.first().map(String::as_str), Some("message_start"));
    assert_eq!(types.last().map(String::as_str), Some("message_stop"));
    assert_eq!(usage_of(&a).unwrap()["output_tokens"], 5);
    // Not streamed: one JSON body, usage included.
    let mut whole = chat(false);
    whole["stream"] = json!(false);
    let w = post(m.addr, "/v1/chat/completions", &whole, WAIT);
    let v: Value = serde_json::from_str(&w.body).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        " the quick brown fox jumps"
    );
    assert_eq!(v["usage"]["completion_tokens"], 5);
    // `--usage off`: never.
    let off = start(&["--tokens", "2", "--usage", "off"]);
    let r = post(off.addr, "/v1/chat/completions", &chat(true), WAIT);
    assert_eq!(usage_of(&r), None);
    let r = post(off.addr, "/v1/messages", &messages(), WAIT);
    assert_eq!(usage_of(&r), None, "{}", r.body);
}

#[test]
fn lengths_follow_the_flags_and_the_request() {
    let m = start(&["--tokens", "request"]);
    let mut body = chat(true);
    body["max_tokens"] = json!(7);
    let r = post(m.addr, "/v1/chat/completions", &body, WAIT);
    assert_eq!(usage_of(&r).unwrap()["completion_tokens"], 7);
    let finish = r.json_events().iter().find_map(|e| {
        e.pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    assert_eq!(finish.as_deref(), Some("length"));
    let range = start(&["--tokens", "3..6", "--seed", "9"]);
    for _ in 0..8 {
        let r = post(range.addr, "/v1/messages", &messages(), WAIT);
        let n = usage_of(&r).unwrap()["output_tokens"].as_u64().unwrap();
        assert!((3..=6).contains(&n), "{n}");
    }
}

#[test]
fn time_to_first_token_and_the_gap_between_tokens_are_honoured() {
    let m = start(&["--tokens", "4", "--ttft", "300ms", "--itl", "100ms"]);
    for (path, body, first) in [
        ("/v1/chat/completions", chat(true), "\"content\":\" the\""),
        ("/v1/messages", messages(), "\"text\":\" the\""),
    ] {
        let r = post(m.addr, path, &body, WAIT);
        assert!(r.complete);
        let at = r.body.find(first).expect("the first token");
        let last = r.body.find(" fox").expect("the fourth token");
        // Lower bounds only: the first token no sooner than the ttft, the
        // fourth no sooner than three gaps after it.
        assert!(
            r.arrived(at) >= Duration::from_millis(300),
            "{path}: {:?}",
            r.arrived(at)
        );
        assert!(
            r.arrived(last) >= r.arrived(at) + Duration::from_millis(300),
            "{path}: {:?} then {:?}",
            r.arrived(at),
            r.arrived(last)
        );
    }
    // `--token-rate` is the same gap, as a rate.
    let rate = start(&["--tokens", "3", "--token-rate", "10/s"]);
    let r = post(rate.addr, "/v1/chat/completions", &chat(true), WAIT);
    assert!(r.arrivals.last().unwrap().1 >= Duration::from_millis(200));
}

#[test]
fn a_stall_goes_silent_and_a_disconnect_ends_the_body_early() {
    let stall = start(&["--tokens", "10", "--stall-after", "3"]);
    let r = post(
        stall.addr,
        "/v1/chat/completions",
        &chat(true),
        Duration::from_millis(800),
    );
    assert!(!r.complete, "a stalled stream does not end");
    assert_eq!(r.data().len(), 3, "{}", r.body);
    let stats = stats(stall.addr);
    assert_eq!(stats["by_fault"]["stall_after"], 1);

    let cut = start(&["--tokens", "10", "--disconnect-after", "2"]);
    let r = post(cut.addr, "/v1/messages", &messages(), WAIT);
    assert!(!r.complete, "the body ends without its last chunk");
    assert_eq!(r.data().len(), 2);

    let reset = start(&["--tokens", "10", "--disconnect-after", "4:reset"]);
    let r = post(reset.addr, "/v1/chat/completions", &chat(true), WAIT);
    assert!(!r.complete);
    assert!(r.data().len() <= 4);
}

#[test]
fn faults_strike_every_nth_request() {
    let m = start(&[
        "--tokens",
        "2",
        "--status",
        "429:7@2",
        "--error-after",
        "1@3",
    ]);
    let statuses: Vec<u16> = (0..4)
        .map(|_| post(m.addr, "/v1/chat/completions", &chat(true), WAIT))
        .map(|r| {
            if r.status == 429 {
                assert_eq!(r.header("retry-after"), Some("7"));
                let v: Value = serde_json::from_str(&r.body).unwrap();
                assert_eq!(v["error"]["code"], "rate_limit_exceeded");
            }
            r.status
        })
        .collect();
    assert_eq!(statuses, [200, 429, 200, 429]);
    let s = stats(m.addr);
    assert_eq!(s["requests"], 4);
    assert_eq!(s["by_status"], json!({"200": 2, "429": 2}));
    assert_eq!(s["by_fault"], json!({"status": 2, "error_event_after": 1}));
    assert!(s["cpu_us_per_request"].as_f64().is_some());
    assert!(s["uptime_s"].as_f64().unwrap() > 0.0);
}

fn stats(addr: SocketAddr) -> Value {
    let r = get(addr, "/mock/stats");
    assert_eq!(r.status, 200);
    serde_json::from_str(&r.body).unwrap()
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-mock-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_config_file_says_what_the_flags_say_and_rotates_replies() {
    let recorded = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/recorded");
    let file = temp_file(
        "rotation.yaml",
        &format!(
            "listen: 127.0.0.1:0\ntokens: 3\nusage: off\nrecordings: {}\n\
             faults:\n  - status: {{code: 503}}\n    every: 4\n\
             replies:\n  - {{}}\n  - text: [Hel, lo]\n  - fixture: openai/text_stop.sse\n",
            recorded.display()
        ),
    );
    let m = start(&["--config", file.to_str().unwrap()]);
    let r: Vec<Response> = (0..4)
        .map(|_| post(m.addr, "/v1/chat/completions", &chat(true), WAIT))
        .collect();
    assert_eq!(content(&r[0]), " the quick brown");
    assert_eq!(usage_of(&r[0]), None, "usage: off");
    assert_eq!(content(&r[1]), "Hello");
    let recording = std::fs::read_to_string(recorded.join("openai/text_stop.sse")).unwrap();
    let recorded_events: Vec<Value> = sse_data(&recording)
        .iter()
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    assert_eq!(content(&r[2]), content_of(&recorded_events));
    assert!(!content(&r[2]).is_empty());
    assert_eq!(usage_of(&r[2]), None, "usage: off applies to fixtures too");
    assert_eq!(r[3].status, 503);
    // The Anthropic wire skips the OpenAI recording.
    let a: Vec<String> = (0..2)
        .map(|_| content(&post(m.addr, "/v1/messages", &messages(), WAIT)))
        .collect();
    assert_eq!(a, [" the quick brown", "Hello"]);
}

#[test]
fn recordings_replay_with_their_timing() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/recorded/openai/text_stop_timed.sse");
    let m = start(&["--replay", file.to_str().unwrap(), "--speed", "2"]);
    let r = post(m.addr, "/v1/chat/completions", &chat(true), WAIT);
    assert_eq!(r.body, std::fs::read_to_string(&file).unwrap());
    // The sidecar's 180 ms before the headers and 420 ms before the first
    // event, at twice the speed.
    assert!(
        r.arrivals[0].1 >= Duration::from_millis(300),
        "{:?}",
        r.arrivals[0]
    );
    let wrong_wire = post(m.addr, "/v1/messages", &messages(), WAIT);
    assert_eq!(wrong_wire.status, 404);
    assert!(wrong_wire.body.contains("no reply for the anthropic API"));
}

#[test]
fn a_fixed_address_sigterm_and_the_summary() {
    // A port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = sluice()
        .args(["--listen", &addr, "--tokens", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), addr);
    let r = post(
        addr.parse().unwrap(),
        "/v1/chat/completions",
        &chat(true),
        WAIT,
    );
    assert_eq!(r.status, 200);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sluice mock: 1 requests (200: 1); CPU ")
            && stderr.contains("µs per request"),
        "{stderr}"
    );
}

fn usage_error(args: &[&str]) -> String {
    let out = sluice().args(args).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_flags_and_files_are_usage_errors() {
    for (args, says) in [
        (&["--tokens", "9..3"][..], "the range \"9..3\" is empty"),
        (&["--status", "200"], "an error status from 400 to 599"),
        (&["--stall-after", "5@0"], "expected @N"),
        (
            &["--itl", "5ms", "--token-rate", "9"],
            "cannot be used with",
        ),
        (&["--usage", "maybe"], "expected on or off"),
        (&["--listen", "localhost"], "--listen"),
        (
            &["--replay", "fixtures", "--tokens", "5"],
            "no effect with --replay",
        ),
        (&["--bogus"], "unexpected argument"),
    ] {
        let err = usage_error(args);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let missing = Path::new(env!("CARGO_MANIFEST_DIR")).join("nowhere.sse");
    let err = usage_error(&["--replay", missing.to_str().unwrap()]);
    assert!(err.contains("nowhere.sse"), "{err}");
    let file = temp_file(
        "bad.yaml",
        "tokens: lots\nfaults:\n  - stall_after: {events: 1}\n    every: 0\n",
    );
    let err = usage_error(&["--config", file.to_str().unwrap()]);
    assert!(err.contains("bad.yaml:1:9: error: tokens:"), "{err}");
    assert!(err.contains("bad.yaml:4:12: error: every must be"), "{err}");
}
