//! Shared helpers for the black-box tests: a Sluice server on 127.0.0.1:0
//! in front of the testkit's mock provider, and a client that reads the
//! SSE stream as any client would.
#![allow(dead_code)]

pub mod chat;
pub mod console;
pub mod logs;
pub mod pg;
pub mod sdk;
pub mod skip;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sluice::compile::{Catalog, compile_sources};
use sluice::provider::sse::{SseEvent, SseParser};
use sluice::serve::RunningServer;
use sluice_testkit::{MockProvider, Reply, Script};
use tokio::net::TcpStream;
use tokio::time::Instant;

pub const TIMEOUTS: &str = "{connect: 1s, first_token: 2s, idle: 3s, total: 10s}";

/// Settings with one `mock` provider at `base_url`.
pub fn settings(base_url: &str, extra_server: &str) -> (PathBuf, String) {
    (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: memory\nserver: {{keepalive: 15s, shutdown_grace: 2s{extra_server}}}\nproviders:\n  mock:\n    kind: openai\n    base_url: {base_url}\n"
        ),
    )
}

pub fn pipeline(name: &str, max_tokens: u32, timeouts: &str) -> (PathBuf, String) {
    (
        PathBuf::from(format!("{name}.yaml")),
        format!(
            "name: {name}\nmodel: {{provider: mock, name: gpt-4o-mini, temperature: 0.2}}\nsystem: Be brief.\nlimits: {{max_tokens: {max_tokens}}}\ntimeouts: {timeouts}\n"
        ),
    )
}

pub fn catalog(base_url: &str, max_tokens: u32, timeouts: &str) -> Catalog {
    catalog_with(base_url, max_tokens, timeouts, "")
}

pub fn catalog_with(
    base_url: &str,
    max_tokens: u32,
    timeouts: &str,
    extra_server: &str,
) -> Catalog {
    match compile_sources(
        &settings(base_url, extra_server),
        &[pipeline("chat", max_tokens, timeouts)],
    ) {
        Ok(c) => c,
        Err(d) => panic!("test configuration does not compile: {d:?}"),
    }
}

pub struct Harness {
    pub mock: MockProvider,
    pub server: RunningServer,
}

impl Harness {
    pub async fn start(script: Script, max_tokens: u32, timeouts: &str) -> Harness {
        Self::start_with(script, max_tokens, timeouts, "").await
    }

    pub async fn start_with(
        script: Script,
        max_tokens: u32,
        timeouts: &str,
        extra_server: &str,
    ) -> Harness {
        let mock = MockProvider::start(script).await.expect("mock starts");
        let cat = catalog_with(&mock.base_url(), max_tokens, timeouts, extra_server);
        let server = RunningServer::start(cat, SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("server starts");
        Harness { mock, server }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }
}

/// Sends one HTTP/1.1 request on a new connection.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Incoming> {
    let (resp, conn) = send_on_own_connection(addr, req).await;
    // The connection lives as long as the response body needs it.
    std::mem::forget(conn);
    resp
}

/// A client connection that is closed (the socket dropped) when this is dropped.
pub struct ClientConn(tokio::task::JoinHandle<()>);

impl Drop for ClientConn {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects, sends `req`, and returns the response with the connection's
/// handle: dropping the handle is a client disconnect.
pub async fn send_on_own_connection(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> (Response<Incoming>, ClientConn) {
    let (sender, conn) = connect(addr).await;
    let mut sender = sender;
    let resp = sender.send_request(req).await.expect("response");
    (resp, conn)
}

pub async fn connect(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    ClientConn,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    // A segment held back by Nagle waits for a delayed ACK: real time that
    // a paused clock does not see (it would jump to the next deadline).
    tcp.set_nodelay(true).expect("nodelay");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, ClientConn(task))
}

pub fn post_json(path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "sluice.test")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

pub async fn post(addr: SocketAddr, body: &str) -> Response<Incoming> {
    send(addr, post_json("/v1/pipelines/chat", body)).await
}

pub async fn body_json(resp: Response<Incoming>) -> serde_json::Value {
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("body is not JSON ({e}): {bytes:?}"))
}

/// A request to `path` with `headers`; a body makes it a POST.
pub fn request_with(
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(if body.is_some() { "POST" } else { "GET" })
        .uri(path)
        .header("host", "sluice.test")
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .unwrap()
}

/// Status, headers and JSON body (null when not JSON) of one request.
pub async fn call_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (http::StatusCode, http::HeaderMap, serde_json::Value) {
    let resp = send(addr, request_with(path, headers, body)).await;
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, json)
}

/// A client API key for the settings: its secret, and the entry that
/// declares it (`  NAME: {hash: "sha256:...", FIELDS}`) under `keys:`.
/// `fields` follows the hash, starting with a comma.
pub struct ApiKey {
    pub secret: String,
    pub entry: String,
}

pub fn api_key(name: &str, fields: &str) -> ApiKey {
    let secret = sluice::auth::new_secret().unwrap();
    let hash = sluice::auth::format_hash(&sluice::auth::digest(&secret));
    ApiKey {
        entry: format!("  {name}: {{hash: \"{hash}\"{fields}}}\n"),
        secret,
    }
}

/// An SSE event as the client saw it, with the (virtual) time it arrived.
#[derive(Debug, Clone)]
pub struct Seen {
    pub name: String,
    pub data: serde_json::Value,
    pub id: Option<String>,
    pub at: Instant,
}

/// Reads a streaming response event by event.
pub struct SseReader {
    body: Incoming,
    parser: SseParser,
    queue: std::collections::VecDeque<(SseEvent, Instant)>,
    pub raw: Vec<u8>,
    pub comments: usize,
    ended: bool,
}

impl SseReader {
    pub fn new(resp: Response<Incoming>) -> Self {
        assert_eq!(resp.status(), http::StatusCode::OK, "not a stream");
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Self {
            body: resp.into_body(),
            parser: SseParser::new(),
            queue: Default::default(),
            raw: Vec::new(),
            comments: 0,
            ended: false,
        }
    }

    /// The next event, or None at the end of the body.
    pub async fn next(&mut self) -> Option<Seen> {
        loop {
            if let Some((ev, at)) = self.queue.pop_front() {
                let data = serde_json::from_str(&ev.data)
                    .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", ev.data));
                return Some(Seen {
                    name: ev.event.unwrap_or_default(),
                    data,
                    id: ev.id,
                    at,
                });
            }
            if self.ended {
                return None;
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let now = Instant::now();
                        self.comments += data.windows(12).filter(|w| w == b": keep-alive").count();
                        self.raw.extend_from_slice(&data);
                        let mut out = Vec::new();
                        self.parser.push(&data, &mut out).expect("valid sse");
                        self.queue.extend(out.into_iter().map(|e| (e, now)));
                    }
                }
                Some(Err(e)) => panic!("body error: {e}"),
                None => {
                    self.ended = true;
                    let mut out = Vec::new();
                    self.parser.finish(&mut out);
                    assert!(out.is_empty(), "the stream ended inside an event: {out:?}");
                }
            }
        }
    }

    /// Reads to the end, bounded by `limit` events.
    pub async fn collect(&mut self) -> Vec<Seen> {
        let mut all = Vec::new();
        while let Some(ev) = self.next().await {
            all.push(ev);
            assert!(all.len() < 100_000, "stream does not end");
        }
        all
    }
}

pub fn names(events: &[Seen]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

pub fn text(events: &[Seen]) -> String {
    events
        .iter()
        .filter(|e| e.name == "delta")
        .map(|e| e.data["text"].as_str().unwrap_or_default())
        .collect()
}

pub fn find<'a>(events: &'a [Seen], name: &str) -> Option<&'a Seen> {
    events.iter().find(|e| e.name == name)
}

pub const SECOND: Duration = Duration::from_secs(1);

/// A synthesized OpenAI stream whose one turn asks for `calls`
/// `(id, name, arguments)`, each argument text split in small fragments
/// and the calls' fragments interleaved. OpenAI itself streams parallel
/// calls one after another (the SDKs' stream helpers rely on it); an
/// interleaving upstream is the harder case for Sluice's assembly.
pub fn openai_tool_calls(calls: &[(&str, &str, &str)]) -> Reply {
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        let body = serde_json::json!({
            "id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        });
        format!("data: {body}\n\n")
    };
    let mut out = chunk(
        serde_json::json!({"role": "assistant", "content": null}),
        None,
    );
    for (i, (id, name, _)) in calls.iter().enumerate() {
        out += &chunk(
            serde_json::json!({"tool_calls": [{"index": i, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
            None,
        );
    }
    let pieces: Vec<Vec<String>> = calls
        .iter()
        .map(|(_, _, args)| {
            args.as_bytes()
                .chunks(3)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect()
        })
        .collect();
    let longest = pieces.iter().map(Vec::len).max().unwrap_or(0);
    for k in 0..longest {
        for (i, p) in pieces.iter().enumerate() {
            if let Some(piece) = p.get(k) {
                out += &chunk(
                    serde_json::json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}),
                    None,
                );
            }
        }
    }
    out += &chunk(serde_json::json!({}), Some("tool_calls"));
    out += "data: {\"id\":\"chatcmpl-t\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":50,\"completion_tokens\":20,\"total_tokens\":70}}\n\n";
    out += "data: [DONE]\n\n";
    Reply::recorded(out)
}

pub fn shop_db() -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "sluice-tools-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let seed = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/shop/seed.sql")
        .canonicalize()
        .unwrap();
    (dir.join("shop.db"), seed)
}

/// A server with one pipeline `chat` (model `the-model` of the provider
/// `up`, of `kind`, at the mock) and the seeded `shop` database declared.
/// `settings_extra` is appended to the settings (prices, say) and
/// `pipeline_rest` to the pipeline after its name and model (limits,
/// budget, tools, clients rules).
pub async fn serve_chat(
    mock: &MockProvider,
    kind: &str,
    settings_extra: &str,
    pipeline_rest: &str,
) -> RunningServer {
    let (db, seed) = shop_db();
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: memory\nproviders:\n  up: {{kind: {kind}, base_url: \"{}\"}}\ndatabases:\n  shop: {{path: \"{}\", seed: \"{}\"}}\n{settings_extra}",
            mock.base_url(),
            db.display(),
            seed.display()
        ),
    );
    let pipeline = (
        PathBuf::from("chat.yaml"),
        format!("name: chat\nmodel: {{provider: up, name: the-model}}\n{pipeline_rest}"),
    );
    let catalog = compile_sources(&settings, &[pipeline]).unwrap_or_else(|d| panic!("{d:#?}"));
    RunningServer::start(catalog, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("server starts")
}

/// A `/v1/messages` request with the headers an Anthropic SDK sends.
pub async fn post_messages(addr: SocketAddr, body: &serde_json::Value) -> Response<Incoming> {
    let mut req = post_json("/v1/messages", &body.to_string());
    let h = req.headers_mut();
    h.insert("anthropic-version", "2023-06-01".parse().unwrap());
    h.insert("x-request-id", "req-fixed".parse().unwrap());
    send(addr, req).await
}

/// The error object of an Anthropic-shaped error answer of `status`.
pub async fn anthropic_error_of(resp: Response<Incoming>, status: u16) -> serde_json::Value {
    assert_eq!(resp.status(), status);
    let body = body_json(resp).await;
    assert_eq!(body["type"], "error", "{body}");
    body["error"].clone()
}

/// The shop database's `lookup_order` tool, as a pipeline declares it.
pub const LOOKUP_TOOL: &str = r#"tools:
  - name: lookup_order
    description: Look up one order by its id
    parameters:
      type: object
      properties: {order_id: {type: integer, minimum: 1}}
      required: [order_id]
    sql: {database: shop, query: "SELECT id, status FROM orders WHERE id = :order_id"}
"#;

/// An Anthropic stream of `blocks` (each a start block and its deltas),
/// ended with `stop_reason` and `usage` (whose `input_tokens` the
/// `message_start` announces).
pub fn anthropic_reply(
    blocks: &[(serde_json::Value, Vec<serde_json::Value>)],
    stop_reason: &str,
    usage: serde_json::Value,
) -> Reply {
    let ev = |name: &str, data: serde_json::Value| format!("event: {name}\ndata: {data}\n\n");
    let mut out = ev(
        "message_start",
        serde_json::json!({"type": "message_start", "message": {"id": "msg_up", "type": "message", "role": "assistant",
            "model": "claude-x", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1}}}),
    );
    for (i, (start, deltas)) in blocks.iter().enumerate() {
        out += &ev(
            "content_block_start",
            serde_json::json!({"type": "content_block_start", "index": i, "content_block": start}),
        );
        for d in deltas {
            out += &ev(
                "content_block_delta",
                serde_json::json!({"type": "content_block_delta", "index": i, "delta": d}),
            );
        }
        out += &ev(
            "content_block_stop",
            serde_json::json!({"type": "content_block_stop", "index": i}),
        );
    }
    out += &ev(
        "message_delta",
        serde_json::json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": usage}),
    );
    out += &ev("message_stop", serde_json::json!({"type": "message_stop"}));
    Reply::recorded(out)
}

/// The message a client assembles from the events, as the SDKs do
/// (message_delta's usage fields replace message_start's).
pub fn assemble_message(events: &[(String, serde_json::Value)]) -> serde_json::Value {
    let mut m = serde_json::Value::Null;
    let mut json_input: std::collections::BTreeMap<usize, String> = Default::default();
    let mut open: Option<usize> = None;
    for (name, d) in events {
        let i = d["index"].as_u64().unwrap_or(0) as usize;
        match name.as_str() {
            "message_start" => m = d["message"].clone(),
            "content_block_start" => {
                assert_eq!(open, None, "block {i} started while another is open");
                assert_eq!(
                    i,
                    m["content"].as_array().unwrap().len(),
                    "index out of order"
                );
                m["content"]
                    .as_array_mut()
                    .unwrap()
                    .push(d["content_block"].clone());
                open = Some(i);
            }
            "content_block_delta" => {
                assert_eq!(open, Some(i), "delta for a block that is not open");
                let b = &mut m["content"][i];
                let delta = &d["delta"];
                let mut add = |key: &str, more: &serde_json::Value| {
                    let s = format!("{}{}", b[key].as_str().unwrap(), more.as_str().unwrap());
                    b[key] = serde_json::json!(s);
                };
                match delta["type"].as_str().unwrap() {
                    "text_delta" => add("text", &delta["text"]),
                    "thinking_delta" => add("thinking", &delta["thinking"]),
                    "signature_delta" => add("signature", &delta["signature"]),
                    "input_json_delta" => json_input
                        .entry(i)
                        .or_default()
                        .push_str(delta["partial_json"].as_str().unwrap()),
                    other => panic!("unknown delta {other}"),
                }
            }
            "content_block_stop" => {
                assert_eq!(open, Some(i));
                open = None;
                if let Some(j) = json_input.remove(&i) {
                    m["content"][i]["input"] = if j.is_empty() {
                        serde_json::json!({})
                    } else {
                        serde_json::from_str(&j).unwrap()
                    };
                }
            }
            "message_delta" => {
                assert_eq!(open, None, "a block is left open");
                m["stop_reason"] = d["delta"]["stop_reason"].clone();
                m["stop_sequence"] = d["delta"]["stop_sequence"].clone();
                for (k, v) in d["usage"].as_object().unwrap() {
                    m["usage"][k] = v.clone();
                }
            }
            "message_stop" | "ping" => {}
            other => panic!("unexpected event {other}"),
        }
    }
    m
}
