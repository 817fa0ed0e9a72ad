//! The server itself, fed raw request bytes over a real loopback socket:
//! request lines, headers and framing in every shape hyper must parse
//! (bodies from the request-body generators, chunked or not, pipelined,
//! the h2 preface followed by noise, or plain noise). Each connection gets
//! an HTTP answer or a close within a bound, no server task panics, no
//! answer is a 500, and `/healthz` still answers after every case.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Once};
use std::time::Duration;

use proptest::prelude::*;
use sluice::compile::compile_sources;
use sluice::serve::RunningServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one connection may take to be answered or closed. Generous: it
/// only tells a hang from a slow machine, it is not a performance claim.
const BOUND: Duration = Duration::from_secs(30);
/// The server's worker threads, told apart by the panic hook.
const SERVER_THREAD: &str = "fuzz-server";

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics on the server's threads (a panicking connection task
/// would otherwise just look like a closed connection), then reports them
/// as usual.
fn count_server_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(SERVER_THREAD) {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// A server with one replay pipeline, on its own runtime for the whole
/// binary: `(runtime, address)`.
static SERVER: LazyLock<(tokio::runtime::Runtime, SocketAddr)> = LazyLock::new(|| {
    count_server_panics();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(SERVER_THREAD)
        .enable_all()
        .build()
        .expect("runtime");
    let recorded = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/recorded");
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: memory\nserver: {{max_body_bytes: 65536}}\nproviders:\n  replay: {{kind: replay, fixtures: {:?}}}\n",
            recorded.display().to_string()
        ),
    );
    let pipeline = (
        PathBuf::from("demo.yaml"),
        "name: demo\nmodel: {provider: replay, name: openai/text_stop.sse}\nlimits: {max_tokens: 256}\n".to_string(),
    );
    let catalog = compile_sources(&settings, &[pipeline]).expect("fuzz server config compiles");
    let server = rt
        .block_on(RunningServer::start(
            catalog,
            SocketAddr::from(([127, 0, 0, 1], 0)),
        ))
        .expect("server starts");
    let addr = server.addr;
    // Runs until the test binary exits.
    std::mem::forget(server);
    (rt, addr)
});

/// What one connection got: the bytes of the answer (possibly none).
/// With `half_close`, the write side is shut after the request, so that an
/// incomplete request ends (hyper then closes, possibly without answering).
async fn exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // The server may answer and close before reading everything: write
    // errors are part of the game.
    let _ = stream.write_all(request).await;
    if half_close {
        let _ = stream.shutdown().await;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.map_err(|_| format!("neither answered nor closed within {BOUND:?}"))?;
    Ok(answer)
}

/// Sends raw bytes on a fresh connection and checks the server's conduct.
pub fn check_raw(request: &[u8]) -> Result<(), TestCaseError> {
    let (rt, addr) = &*SERVER;
    let before = PANICS.load(Ordering::SeqCst);
    let answer = rt
        .block_on(exchange(*addr, request, true))
        .map_err(TestCaseError::fail)?;
    let h2 = request.starts_with(b"PRI * HTTP/2.0");
    if !answer.is_empty() && !h2 {
        prop_assert!(
            answer.starts_with(b"HTTP/1."),
            "not an HTTP answer: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
        for status in statuses(&answer) {
            prop_assert!(
                status != 500,
                "a 500 answer: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(600)])
            );
        }
    }
    prop_assert_eq!(
        PANICS.load(Ordering::SeqCst),
        before,
        "a server task panicked"
    );
    let health = rt
        .block_on(exchange(
            *addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            false,
        ))
        .map_err(TestCaseError::fail)?;
    prop_assert!(
        health.starts_with(b"HTTP/1.1 200"),
        "/healthz: {:?}",
        String::from_utf8_lossy(&health)
    );
    Ok(())
}

/// The status codes of the answers in `bytes` (pipelined answers included).
fn statuses(bytes: &[u8]) -> Vec<u16> {
    bytes
        .windows(9)
        .enumerate()
        .filter(|(i, w)| {
            (*i == 0 || bytes[i - 1] == b'\n') && w.starts_with(b"HTTP/1.") && w[8] == b' '
        })
        .filter_map(|(i, _)| {
            std::str::from_utf8(bytes.get(i + 9..i + 12)?)
                .ok()?
                .parse()
                .ok()
        })
        .collect()
}

fn request_head() -> impl Strategy<Value = String> {
    let method = prop_oneof![
        4 => Just("POST"), 3 => Just("GET"), 1 => Just("HEAD"), 1 => Just("PUT"), 1 => Just("OPTIONS"),
        1 => Just("CONNECT"), 1 => Just("get"), 1 => Just(""),
    ];
    let target = prop_oneof![
        4 => Just("/v1/pipelines/demo".to_string()),
        3 => Just("/v1/chat/completions".to_string()),
        1 => Just("/v1/pipelines".to_string()),
        1 => Just("/v1/models".to_string()),
        1 => Just("/healthz".to_string()),
        1 => Just("/metrics".to_string()),
        1 => Just("*".to_string()),
        1 => Just("http://x/v1/pipelines/demo".to_string()),
        1 => Just("/v1/pipelines/demo?x=%00".to_string()),
        1 => "/[!-~]{0,30}",
        1 => (1usize..70_000).prop_map(|n| format!("/{}", "a".repeat(n))),
    ];
    let version = prop_oneof![8 => Just("HTTP/1.1"), 2 => Just("HTTP/1.0"), 1 => Just("HTTP/2.0"), 1 => Just("HTTP/1.2"), 1 => Just("")];
    (method, target, version).prop_map(|(m, t, v)| format!("{m} {t} {v}"))
}

fn request_header() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("Content-Type: application/json".to_string()),
        1 => Just("Content-Type: text/plain".to_string()),
        1 => Just("Host: 127.0.0.1".to_string()),
        1 => Just("Host: a\r\nHost: b".to_string()),
        1 => Just("Expect: 100-continue".to_string()),
        1 => Just("Connection: close".to_string()),
        1 => Just("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__".to_string()),
        1 => Just("Transfer-Encoding: gzip".to_string()),
        1 => Just("Content-Length: 18446744073709551616".to_string()),
        1 => Just("Content-Length: -1".to_string()),
        1 => Just("Content-Length: 1, 2".to_string()),
        1 => (0u64..100_000).prop_map(|n| format!("Content-Length: {n}")),
        1 => "X-Request-Id: [ -~]{0,80}",
        1 => "Authorization: Bearer [ -~]{0,20}",
        1 => Just(" folded: continuation".to_string()),
        1 => ("[!-~]{0,12}", "[ -~]{0,30}").prop_map(|(n, v)| format!("{n}: {v}")),
        1 => (1usize..70_000).prop_map(|n| format!("X-Big: {}", "b".repeat(n))),
    ]
}

/// A request with its body framed by `Content-Length` (right or wrong),
/// chunked (maybe broken), or not at all.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let body = prop_oneof![
        3 => crate::request::hostile_body_text(),
        1 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => Just(r#"{"input":"hi"}"#.to_string()),
        1 => Just(r#"{"model":"demo","messages":[{"role":"user","content":"hi"}],"stream":true}"#.to_string()),
    ];
    (
        request_head(),
        proptest::collection::vec(request_header(), 0..5),
        body,
        0u8..5,
        prop_oneof![6 => Just("\r\n"), 1 => Just("\n")],
        1usize..3,
    )
        .prop_map(|(head, headers, body, framing, eol, copies)| {
            let mut text = format!("{head}{eol}");
            for h in headers {
                text.push_str(&h);
                text.push_str(eol);
            }
            let framed = match framing {
                0 => format!("Content-Length: {}{eol}{eol}{body}", body.len()),
                1 => format!(
                    "Transfer-Encoding: chunked{eol}{eol}{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                ),
                2 => format!(
                    "Transfer-Encoding: chunked{eol}{eol}{:x}\r\n{body}",
                    body.len() + 7
                ),
                3 => format!("Content-Length: {}{eol}{eol}{body}", body.len() / 2),
                _ => format!("{eol}{body}"),
            };
            text.push_str(&framed);
            text.repeat(copies).into_bytes()
        })
}

fn raw_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => request(),
        1 => proptest::collection::vec(any::<u8>(), 0..300)
            .prop_map(|noise| [&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], &noise].concat()),
        1 => proptest::collection::vec(any::<u8>(), 0..300),
        1 => request().prop_flat_map(|bytes| {
            let len = bytes.len();
            (Just(bytes), 0..len.max(1))
        })
        .prop_map(|(mut bytes, cut)| {
            bytes.truncate(cut);
            bytes
        }),
    ]
}

#[test]
fn raw_requests_get_an_answer_or_a_close() {
    crate::check(file!(), 8, raw_bytes(), |bytes| check_raw(&bytes));
}
