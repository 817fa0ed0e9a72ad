//! OpenTelemetry traces, black-box: Sluice exports to an in-process
//! OTLP/HTTP receiver that decodes each export with the official
//! `opentelemetry-proto` types; the tests check the span tree and the
//! GenAI attributes of a plain request, retries and a fallback, a tool
//! loop, a timeout and a client that leaves, and that a collector that is
//! down or hangs costs a request nothing (its drops are counted).
//!
//! Stopping the server flushes what is queued, so every test reads the
//! spans after `stop()` without polling. The receiver and the helpers are
//! here; `spans` checks the span trees, `export` a collector that is down
//! or hangs.

#[path = "../common/mod.rs"]
mod common;
mod export;
mod spans;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use prost::Message as _;
use sluice::compile::compile_sources;
use sluice::serve::RunningServer;
use sluice_testkit::{Fault, MockProvider, Reply, Script};

/// An export's spans, each with its resource's `service.name`.
type Spans = Vec<(String, Span)>;

/// The exports as received: each one's request headers and spans.
#[derive(Default)]
struct Received {
    exports: Vec<(HashMap<String, String>, Spans)>,
}

/// An OTLP/HTTP collector on 127.0.0.1:0, on a thread and runtime of its
/// own (so that a paused test clock does not touch it).
#[derive(Clone)]
struct Collector {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
}

impl Collector {
    fn start() -> Collector {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let store = received.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let store = store.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let store = store.clone();
                            async move { Ok::<_, std::convert::Infallible>(export(&store, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    });
                }
            });
        });
        Collector { addr, received }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received, in the order the exports came.
    fn spans(&self) -> Vec<Span> {
        self.received
            .lock()
            .unwrap()
            .exports
            .iter()
            .flat_map(|(_, spans)| spans.iter().map(|(_, s)| s.clone()))
            .collect()
    }
}

async fn export(
    store: &Mutex<Received>,
    req: http::Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    assert_eq!(req.uri().path(), "/v1/traces");
    assert_eq!(req.method(), http::Method::POST);
    assert_eq!(req.headers()["content-type"], "application/x-protobuf");
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let decoded = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let mut spans = Vec::new();
    for rs in decoded.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| string_of(&r.attributes, "service.name"))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
        }
    }
    store.lock().unwrap().exports.push((headers, spans));
    let mut resp = Response::new(Full::new(Bytes::from(
        ExportTraceServiceResponse::default().encode_to_vec(),
    )));
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    resp
}

fn value_of<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn string_of(attrs: &[KeyValue], key: &str) -> Option<String> {
    match value_of(attrs, key)? {
        Value::StringValue(s) => Some(s.clone()),
        other => panic!("{key} is not a string: {other:?}"),
    }
}

fn str_attr(s: &Span, key: &str) -> Option<String> {
    string_of(&s.attributes, key)
}

fn int_attr(s: &Span, key: &str) -> Option<i64> {
    match value_of(&s.attributes, key)? {
        Value::IntValue(n) => Some(*n),
        other => panic!("{key} is not an integer: {other:?}"),
    }
}

fn list_attr(s: &Span, key: &str) -> Option<Vec<String>> {
    match value_of(&s.attributes, key)? {
        Value::ArrayValue(a) => Some(
            a.values
                .iter()
                .map(|v| match &v.value {
                    Some(Value::StringValue(s)) => s.clone(),
                    other => panic!("{key} holds {other:?}"),
                })
                .collect(),
        ),
        other => panic!("{key} is not an array: {other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn kind(s: &Span) -> SpanKind {
    SpanKind::try_from(s.kind).unwrap()
}

fn status(s: &Span) -> SpanStatus {
    s.status.as_ref().map_or(SpanStatus::Unset, |st| {
        SpanStatus::try_from(st.code).unwrap()
    })
}

/// Each of `spans` ended as an error whose `error.type` is `error_type`.
fn assert_failed(spans: &[&Span], error_type: &str) {
    for s in spans {
        assert_eq!(
            str_attr(s, "error.type").as_deref(),
            Some(error_type),
            "{}",
            s.name
        );
        assert_eq!(status(s), SpanStatus::Error);
    }
}

/// The one request span of what was received, and its children in the
/// order they started.
fn tree(spans: &[Span]) -> (Span, Vec<Span>) {
    let roots: Vec<&Span> = spans
        .iter()
        .filter(|s| kind(s) == SpanKind::Server)
        .collect();
    assert_eq!(roots.len(), 1, "one request span: {spans:#?}");
    let root = roots[0].clone();
    let mut children: Vec<Span> = spans
        .iter()
        .filter(|s| s.span_id != root.span_id)
        .cloned()
        .collect();
    for c in &children {
        assert_eq!(c.trace_id, root.trace_id, "one trace");
        assert_eq!(
            c.parent_span_id, root.span_id,
            "{} is a child of the request",
            c.name
        );
        assert!(c.start_time_unix_nano >= root.start_time_unix_nano);
        assert!(c.end_time_unix_nano <= root.end_time_unix_nano);
    }
    children.sort_by_key(|s| s.start_time_unix_nano);
    (root, children)
}

const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

fn traceparent() -> String {
    format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
}

/// A server whose providers `primary` and `backup` are the mocks, with
/// the seeded shop database, exporting traces to `collector` (its
/// `telemetry:` section completed by `telemetry`).
async fn start(
    primary: &MockProvider,
    backup: Option<&MockProvider>,
    collector_endpoint: &str,
    telemetry: &str,
    pipeline_rest: &str,
) -> RunningServer {
    let (db, seed) = shop_db();
    let backup = backup.map_or(String::new(), |b| {
        format!(
            "  backup: {{kind: openai, base_url: \"{}\"}}\n",
            b.base_url()
        )
    });
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: memory\nserver: {{shutdown_grace: 2s}}\nproviders:\n  primary: {{kind: openai, base_url: \"{}\"}}\n{backup}databases:\n  shop: {{path: \"{}\", seed: \"{}\"}}\ntelemetry: {{endpoint: \"{collector_endpoint}\", batch_delay: 20ms{telemetry}}}\nprices:\n  main-model: {{input: 1.0, output: 2.0}}\n",
            primary.base_url(),
            db.display(),
            seed.display()
        ),
    );
    let pipeline = (
        PathBuf::from("chat.yaml"),
        format!(
            "name: chat\nmodel: {{provider: primary, name: main-model}}\nsystem: Be brief.\n{pipeline_rest}"
        ),
    );
    let catalog = compile_sources(&settings, &[pipeline]).unwrap_or_else(|d| panic!("{d:#?}"));
    RunningServer::start(catalog, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

const LIMITS: &str =
    "limits: {max_tokens: 64}\ntimeouts: {first_token: 2s, idle: 2s, total: 20s}\n";

async fn chat(addr: SocketAddr, headers: &[(&str, &str)]) -> Vec<Seen> {
    let resp = send(
        addr,
        request_with(
            "/v1/pipelines/chat",
            headers,
            Some(r#"{"input":"hi there"}"#),
        ),
    )
    .await;
    SseReader::new(resp).collect().await
}
