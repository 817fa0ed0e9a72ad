//! A provider that echoes the API key never leaks it: the real `sluice`
//! binary, in front of a hand-rolled loopback upstream that quotes the
//! request's `Authorization` (OpenAI) or `x-api-key` (Anthropic) header in
//! a 401 body, a 500 body cut in the middle of the key, an in-stream error
//! before and after the first token, and malformed stream data. Both client
//! routes are called for every case, with the client's own API key (and
//! some with a key nobody declared); then every byte the client received,
//! every log line and the ledger's files are searched for any piece of
//! any of the four keys. Real time, but bounded: every wait has a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

#[path = "common/raw.rs"]
mod raw;

/// The part of each key no echo may show any 10 bytes of.
const OPENAI_SECRET: &str = "Qm4vT9xKp2Lw7RzN5bY1cH8dJ3fG6sA0eU";
const ANTHROPIC_SECRET: &str = "Wn6yB3kVq8Zr1Lx5Tp9Md2Hc7Gf4Js0aPe";
/// The client's key to Sluice (declared by its hash), and one nobody
/// declared.
const CLIENT_SECRET: &str =
    "sk-sluice-5b0e3c1f9a7d2e4b6c8a0f1e3d5c7b9a2e4f6a8c0b1d3e5f7a9c2b4d6e8f0a1c";
const WRONG_SECRET: &str =
    "sk-sluice-0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b";

fn openai_key() -> String {
    format!("sk-proj-{OPENAI_SECRET}")
}

fn anthropic_key() -> String {
    format!("sk-ant-api03-{ANTHROPIC_SECRET}")
}

/// The upstream's behaviours, chosen by the request's model name.
const CASES: [&str; 5] = [
    "status-401",
    "status-500",
    "stream-error",
    "late-error",
    "malformed",
];

fn tempdir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-secrets-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Reads one request (head and Content-Length body) from `s`.
fn read_request(s: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((head, String::from_utf8_lossy(&body).into_owned()))
}

/// The value of header `name` in `head`, as the upstream received it.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn sse_response(events: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{events}",
        events.len()
    )
}

fn status_response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// What the upstream answers to `model`, quoting `auth` (the whole header
/// line's value) and `key` (the bare key).
fn answer(anthropic: bool, model: &str, auth: &str, key: &str) -> String {
    let masked = format!("{}...{}", &key[..3], &key[key.len() - 4..]);
    let quoted = format!("Incorrect API key provided: {masked}. The header was {auth}");
    match model {
        "status-401" => status_response(
            "401 Unauthorized",
            "application/json",
            &serde_json::json!({"error": {"message": quoted, "type": "invalid_request_error"}})
                .to_string(),
        ),
        // The key sits where a 200-character summary is cut.
        "status-500" => status_response(
            "500 Internal Server Error",
            "text/plain",
            &format!(
                "{} proxy failed, request headers: {auth} and {key}",
                "x".repeat(150)
            ),
        ),
        "stream-error" | "late-error" => {
            let text = if model == "late-error" {
                if anthropic {
                    concat!(
                        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[],\"usage\":{\"input_tokens\":3,\"output_tokens\":0}}}\n\n",
                        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
                        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
                    )
                    .to_string()
                } else {
                    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}]}\n\n"
                        .to_string()
                }
            } else {
                String::new()
            };
            let error = if anthropic {
                format!(
                    "event: error\ndata: {}\n\n",
                    serde_json::json!({"type": "error", "error": {"type": "api_error", "message": quoted}})
                )
            } else {
                format!(
                    "data: {}\n\n",
                    serde_json::json!({"error": {"message": quoted, "type": "server_error"}})
                )
            };
            sse_response(&format!("{text}{error}"))
        }
        "malformed" => {
            let event = if anthropic {
                "event: content_block_delta\n"
            } else {
                ""
            };
            sse_response(&format!("{event}data: {{\"oops\": {auth} {key}\n\n"))
        }
        other => status_response("404 Not Found", "text/plain", &format!("no case {other}")),
    }
}

/// A loopback upstream for both wire formats. Returns its address and the
/// number of requests it answered with the key echoed.
fn upstream() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let echoed = Arc::new(AtomicUsize::new(0));
    let count = echoed.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            let count = count.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let Some((head, body)) = read_request(&mut s) else {
                    return;
                };
                let request: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let model = request["model"].as_str().unwrap_or_default();
                let (anthropic, auth, key) = match header(&head, "x-api-key") {
                    Some(key) => (true, format!("x-api-key: {key}"), key.to_string()),
                    None => {
                        let auth = header(&head, "authorization").unwrap_or_default();
                        let key = auth.strip_prefix("Bearer ").unwrap_or_default();
                        (false, format!("Authorization: {auth}"), key.to_string())
                    }
                };
                if key.len() > 8 {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                let _ = s.write_all(answer(anthropic, model, &auth, &key).as_bytes());
            });
        }
    });
    (addr, echoed)
}

/// A pipelines directory with one pipeline per case and wire format.
fn pipelines(upstream: &str, ledger: &Path) -> PathBuf {
    let dir = tempdir();
    std::fs::write(
        dir.join("settings.yaml"),
        format!(
            "providers:\n  openai:\n    kind: openai\n    base_url: http://{upstream}/v1\n    api_key_env: ECHO_OPENAI_KEY\n  anthropic:\n    kind: anthropic\n    base_url: http://{upstream}/v1\n    api_key_env: ECHO_ANTHROPIC_KEY\nstorage: sqlite:{}\nkeys:\n  app: {{hash: \"{}\", pipelines: [\"*\"]}}\n",
            ledger.display(),
            sluice::auth::format_hash(&sluice::auth::digest(CLIENT_SECRET))
        ),
    )
    .unwrap();
    for provider in ["openai", "anthropic"] {
        for case in CASES {
            std::fs::write(
                dir.join(format!("{provider}-{case}.yaml")),
                format!(
                    "name: {provider}-{case}\nmodel: {{provider: {provider}, name: {case}}}\nlimits: {{max_tokens: 64}}\nretries: {{attempts: 1, backoff: 10ms}}\ntimeouts: {{connect: 2s, first_token: 10s, idle: 10s, total: 20s}}\n"
                ),
            )
            .unwrap();
        }
    }
    dir
}

struct Served {
    child: Child,
    addr: String,
    lines: mpsc::Receiver<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--log-json", "serve", dir.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env("SLUICE_LOG", "debug")
        .env("ECHO_OPENAI_KEY", openai_key())
        .env("ECHO_ANTHROPIC_KEY", anthropic_key())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sluice starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let addr = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("sluice did not start: {seen:#?}"));
        if line.contains("serving")
            && let Some(start) = line.find("127.0.0.1:")
        {
            let rest = &line[start..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                .unwrap_or(rest.len());
            break rest[..end].to_string();
        }
        seen.push(line);
    };
    Served { child, addr, lines }
}

/// A plain HTTP/1.1 POST with `auth` (a header line); returns the whole
/// response.
fn post(addr: &str, path: &str, auth: &str, body: &str) -> String {
    raw::exchange(addr, "POST", path, &[auth], body)
}

/// Every 10-byte piece of any key's secret part found in `text`.
fn leaks(text: &str) -> Vec<String> {
    let client = &CLIENT_SECRET["sk-sluice-".len()..];
    let wrong = &WRONG_SECRET["sk-sluice-".len()..];
    [OPENAI_SECRET, ANTHROPIC_SECRET, client, wrong]
        .iter()
        .flat_map(|s| s.as_bytes().windows(10))
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .filter(|w| text.contains(w.as_str()))
        .collect()
}

/// Stops `served` with SIGTERM (so the ledger is settled and closed) and
/// returns every log line it wrote.
fn stop(mut served: Served) -> Vec<String> {
    let status = Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while served.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "sluice did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut lines = Vec::new();
    while let Ok(line) = served.lines.recv_timeout(Duration::from_secs(5)) {
        lines.push(line);
    }
    lines
}

#[test]
fn an_upstream_that_echoes_the_key_leaks_it_nowhere() {
    let (upstream, echoed) = upstream();
    let ledger_dir = tempdir();
    let ledger = ledger_dir.join("ledger.db");
    let dir = pipelines(&upstream, &ledger);
    let served = serve(&dir);

    let mut client = String::new();
    let mut calls = 0;
    for provider in ["openai", "anthropic"] {
        for case in CASES {
            let name = format!("{provider}-{case}");
            let routes = [
                (
                    format!("/v1/pipelines/{name}"),
                    r#"{"input":"hello"}"#.to_string(),
                ),
                (
                    "/v1/chat/completions".to_string(),
                    format!(
                        r#"{{"model":"{name}","stream":true,"messages":[{{"role":"user","content":"hello"}}]}}"#
                    ),
                ),
            ];
            let auth = format!("Authorization: Bearer {CLIENT_SECRET}");
            for (path, body) in routes {
                let resp = post(&served.addr, &path, &auth, &body);
                calls += 1;
                // Each call failed with the provider's (scrubbed) words.
                assert!(
                    resp.contains("error"),
                    "{name} {path}: no error reached the client: {resp}"
                );
                client.push_str(&resp);
            }
        }
    }
    // A key nobody declared, each way of sending it, on each route.
    for auth in [
        format!("Authorization: Bearer {WRONG_SECRET}"),
        format!("x-api-key: {WRONG_SECRET}"),
    ] {
        for path in [
            "/v1/pipelines/openai-status-401",
            "/v1/chat/completions",
            "/v1/messages",
        ] {
            let resp = post(
                &served.addr,
                path,
                &auth,
                r#"{"model":"openai-status-401"}"#,
            );
            assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
            client.push_str(&resp);
        }
    }
    let logs = stop(served).join("\n");

    // The upstream really did echo a key on every call.
    assert_eq!(echoed.load(Ordering::SeqCst), calls);
    assert_eq!(
        leaks(&client),
        Vec::<String>::new(),
        "client bodies: {client}"
    );
    assert_eq!(leaks(&logs), Vec::<String>::new(), "logs: {logs}");
    let mut ledger_bytes = Vec::new();
    for entry in std::fs::read_dir(&ledger_dir).unwrap() {
        ledger_bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert!(!ledger_bytes.is_empty(), "the ledger was written");
    assert_eq!(
        leaks(&String::from_utf8_lossy(&ledger_bytes)),
        Vec::<String>::new(),
        "ledger files"
    );
    // And the echo did travel: scrubbed, it reached the client and the log.
    assert!(client.contains("[redacted]"), "{client}");
    assert!(logs.contains("[redacted]"), "{logs}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&ledger_dir);
}
