//! The HTTP surface: the only module that knows hyper's server side.
//!
//! Routes, request validation, mapping run outcomes to HTTP statuses and
//! SSE, and graceful shutdown. A request's work runs in `run`; this module
//! only waits for its admission and forwards its events.

mod answers;
mod anthropic_blocks;
mod anthropic_compat;
mod anthropic_request;
mod anthropic_stream;
mod auth;
mod conn;
mod console_api;
mod console_ui;
mod cors;
mod openai_compat;
mod openai_messages;
mod openai_request;
mod reload;
mod request;
mod server;
pub mod sse;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::Frame;
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;
use tracing::{Instrument, debug};

use crate::compile::{Pipeline, ServerSettings};
use crate::run::{
    self, Admission, ErrorCode, Event, EventReceiver, RunContext, RunRequest, ToolCallEvent,
    ToolResultEvent,
};
use conn::{ConnBody, InFlight};

use answers::{error_response, json_response, method_not_allowed, rejection_response};
/// The request-body validators, for the fuzz tests only.
#[doc(hidden)]
pub(crate) use answers::{rejection_status, set_rate_headers, set_retry_after};
pub use openai_compat::fuzzing;
pub use reload::{ReloadHandle, watch};
pub(crate) use request::read_json_body;
pub use request::{Invalid, PipelineCall};
pub use server::{RunningServer, Server};

/// Most bytes hyper buffers for one HTTP/1.1 connection (its write queue,
/// and a request head).
const H1_MAX_BUF: usize = 64 * 1024;
/// Most bytes hyper buffers for one HTTP/2 stream waiting to be sent.
const H2_MAX_SEND_BUF: usize = 16 * 1024;

/// A response body: a whole document or an event stream.
pub enum ResponseBody {
    Full(Full<Bytes>),
    Sse(sse::SseBody),
    /// `/v1/chat/completions` streaming: OpenAI chunks.
    Chat(sse::EventBody<openai_compat::ChatEncoder>),
    /// `/v1/messages` streaming: Anthropic's stream events.
    Messages(sse::EventBody<anthropic_stream::MessagesEncoder>),
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ResponseBody::Full(b) => Pin::new(b).poll_frame(cx),
            ResponseBody::Sse(b) => Pin::new(b).poll_frame(cx),
            ResponseBody::Chat(b) => Pin::new(b).poll_frame(cx),
            ResponseBody::Messages(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(b) => b.is_end_stream(),
            ResponseBody::Sse(_) | ResponseBody::Chat(_) | ResponseBody::Messages(_) => false,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ResponseBody::Full(b) => b.size_hint(),
            ResponseBody::Sse(b) => b.size_hint(),
            ResponseBody::Chat(_) | ResponseBody::Messages(_) => http_body::SizeHint::default(),
        }
    }
}

/// State shared by all connections, for one version of the
/// configuration: a reload makes a new one (with the same `run`, the same
/// settings) and swaps it in for the requests that come next.
struct Shared {
    /// Which configuration this is: 1 at start, one more per reload.
    version: u64,
    pipelines: std::collections::BTreeMap<String, Arc<Pipeline>>,
    /// The API keys, and whether requests need one.
    auth: Arc<crate::auth::Auth>,
    settings: ServerSettings,
    run: Arc<RunContext>,
    /// Connections served at once (`max_connections`, or derived from the
    /// descriptor limit).
    max_connections: usize,
    /// How reloads went; the same for every version.
    reloads: Arc<reload::Status>,
    /// The last readiness probe; the same for every version.
    ready: Arc<Readiness>,
}

/// `/readyz`: the ledger's answer to a write, kept for a second so that a
/// flood of probes costs one write a second.
#[derive(Default)]
pub(crate) struct Readiness {
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, Result<(), String>)>>,
}

/// How long a readiness answer is reused, and how long the ledger has to
/// answer a probe.
const READY_FOR: Duration = Duration::from_secs(1);
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /readyz`: 200 when the configuration is loaded (it always is
/// once serving) and the ledger takes a write; 503 with the reason
/// otherwise.
async fn readiness(shared: &Shared) -> Response<ResponseBody> {
    let mut last = shared.ready.last.lock().await;
    let fresh = last
        .as_ref()
        .filter(|(at, _)| at.elapsed() < READY_FOR)
        .map(|(_, r)| r.clone());
    let result = match fresh {
        Some(r) => r,
        None => {
            let ledger = &shared.run.ledger;
            let r = match tokio::time::timeout(READY_TIMEOUT, ledger.heartbeat()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!(
                    "the ledger ({}) cannot be written: {e}",
                    ledger.backend()
                )),
                Err(_) => Err(format!(
                    "the ledger ({}) did not answer within {} s",
                    ledger.backend(),
                    READY_TIMEOUT.as_secs()
                )),
            };
            *last = Some((tokio::time::Instant::now(), r.clone()));
            r
        }
    };
    drop(last);
    match result {
        Ok(()) => json_response(
            StatusCode::OK,
            json!({"status": "ready", "config_version": shared.version}),
        ),
        Err(reason) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not_ready", "reason": reason, "config_version": shared.version}),
        ),
    }
}

fn new_request_id(req: &Request<Incoming>) -> String {
    // A caller's own id is kept when it is harmless to log and echo.
    if let Some(id) = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        && !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return id.to_string();
    }
    uuid::Uuid::new_v4().simple().to_string()
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    in_flight: InFlight,
) -> Response<ConnBody> {
    let request_id = new_request_id(&req);
    let span = tracing::info_span!("request", id = %request_id);
    let version = req.version();
    // Before authentication: a browser's preflight carries no key.
    let cors = shared.settings.cors.as_deref();
    let preflight = cors::is_preflight(req.method(), req.headers());
    let cross = span.in_scope(|| cors::check(cors, req.method(), req.uri().path(), req.headers()));
    let mut resp = if in_flight.reserve() && !conn::HEALTH_PATHS.contains(&req.uri().path()) {
        over_capacity(&request_id)
    } else if preflight {
        cors::preflight(cors, &cross, req.headers(), &request_id)
    } else {
        route(&shared, req, &request_id).instrument(span).await
    };
    let headers = resp.headers_mut();
    cors::decorate(cors, &cross, preflight, headers);
    headers.insert("x-sluice-config", HeaderValue::from(shared.version));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", v);
    }
    if version != Version::HTTP_11 {
        headers.remove(header::CONNECTION);
    }
    resp.map(|body| ConnBody {
        body,
        _in_flight: in_flight,
    })
}

/// The answer on a reserve connection to anything but a health check.
fn over_capacity(request_id: &str) -> Response<ResponseBody> {
    let mut resp = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "over_capacity",
        "the server is at its connection limit (max_connections); try again shortly",
        None,
        request_id,
    );
    set_retry_after(&mut resp, Some(Duration::from_secs(1)));
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

async fn route(
    shared: &Shared,
    req: Request<Incoming>,
    request_id: &str,
) -> Response<ResponseBody> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path == "/readyz" {
        return match method {
            Method::GET | Method::HEAD => readiness(shared).await,
            _ => method_not_allowed("GET", request_id),
        };
    }
    if path == "/healthz" {
        return match method {
            Method::GET | Method::HEAD => json_response(StatusCode::OK, json!({"status": "ok"})),
            _ => method_not_allowed("GET", request_id),
        };
    }
    // The console's page holds no data: served without a key (it asks
    // for one), and with one only when that key is an admin's.
    if console_ui::serves(&path) {
        return console_ui::answer(shared, &method, &path, req.headers(), request_id);
    }
    // Every route but the liveness probe needs a key once keys are declared.
    let api = match path.as_str() {
        "/v1/chat/completions" | "/v1/models" => auth::Api::OpenAi,
        p if p.starts_with("/v1/messages") => auth::Api::Anthropic,
        _ => auth::Api::Native,
    };
    let caller = match auth::authenticate(&shared.auth, req.headers()) {
        Ok(c) => c,
        Err(denied) => return auth::refuse(shared, denied, api, request_id),
    };
    match path.as_str() {
        "/metrics" => match method {
            _ if caller.as_ref().is_some_and(|k| !k.metrics) => {
                auth::refuse(shared, auth::Denied::Forbidden, api, request_id)
            }
            Method::GET => {
                let mut resp = Response::new(ResponseBody::Full(Full::new(Bytes::from(
                    shared.run.metrics.encode(),
                ))));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                resp
            }
            _ => method_not_allowed("GET", request_id),
        },
        "/v1/chat/completions" => match method {
            Method::POST => openai_compat::chat_completions(shared, req, request_id, caller).await,
            _ => method_not_allowed("POST", request_id),
        },
        "/v1/messages" => match method {
            Method::POST => anthropic_compat::messages(shared, req, request_id, caller).await,
            _ => method_not_allowed("POST", request_id),
        },
        "/v1/messages/count_tokens" => match method {
            Method::POST => anthropic_compat::count_tokens(shared, req, request_id, caller).await,
            _ => method_not_allowed("POST", request_id),
        },
        p if console_api::serves(p) => {
            console_api::answer(
                shared,
                &method,
                p,
                req.uri().query(),
                caller.as_deref(),
                request_id,
            )
            .await
        }
        "/v1/config" => match method {
            _ if caller.as_ref().is_some_and(|k| !k.metrics) => {
                auth::refuse(shared, auth::Denied::Forbidden, api, request_id)
            }
            Method::GET => json_response(StatusCode::OK, shared.reloads.report(shared)),
            _ => method_not_allowed("GET", request_id),
        },
        "/v1/models" => match method {
            Method::GET => openai_compat::models(shared, caller.as_deref()),
            _ => method_not_allowed("GET", request_id),
        },
        "/v1/pipelines" => match method {
            Method::GET => list_pipelines(shared, caller.as_deref()),
            _ => method_not_allowed("GET", request_id),
        },
        p if p.starts_with("/v1/pipelines/") => {
            let name = &p["/v1/pipelines/".len()..];
            if let Err(denied) = auth::may_call(caller.as_deref(), name) {
                return auth::refuse(shared, denied, api, request_id);
            }
            let Some(pipeline) = shared.pipelines.get(name).cloned() else {
                return error_response(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("no pipeline named \"{name}\"; GET /v1/pipelines lists them"),
                    None,
                    request_id,
                );
            };
            if method != Method::POST {
                return method_not_allowed("POST", request_id);
            }
            call_pipeline(shared, pipeline, req, request_id, caller).await
        }
        _ => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {path}"),
            None,
            request_id,
        ),
    }
}

fn list_pipelines(shared: &Shared, caller: Option<&crate::auth::ApiKey>) -> Response<ResponseBody> {
    let list: Vec<_> = shared
        .pipelines
        .values()
        .filter(|p| auth::lists(caller, &p.name))
        .map(|p| {
            json!({
                "name": p.name,
                "route": format!("/v1/pipelines/{}", p.name),
                "description": p.description,
                "provider": p.provider_name,
                "model": p.model,
                "max_tokens": p.max_tokens,
                "timeouts": {
                    "connect_ms": p.timeouts.connect.as_millis() as u64,
                    "first_token_ms": p.timeouts.first_token.as_millis() as u64,
                    "idle_ms": p.timeouts.idle.as_millis() as u64,
                    "total_ms": p.timeouts.total.as_millis() as u64,
                },
            })
        })
        .collect();
    json_response(StatusCode::OK, json!({ "pipelines": list }))
}

async fn call_pipeline(
    shared: &Shared,
    pipeline: Arc<Pipeline>,
    req: Request<Incoming>,
    request_id: &str,
    caller: Option<Arc<crate::auth::ApiKey>>,
) -> Response<ResponseBody> {
    let trace = shared.run.incoming_trace(req.headers());
    let body = match read_json_body(
        req,
        shared.settings.max_body_bytes,
        shared.settings.connections.body_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => {
            run::record_invalid(
                &shared.run,
                &pipeline,
                request_id,
                e.code(),
                caller.as_deref(),
            )
            .await;
            return error_response(e.status(), e.code(), &e.to_string(), None, request_id);
        }
    };
    let call = match request::parse(&body) {
        Ok(c) => c,
        Err(Invalid { field, message }) => {
            run::record_invalid(
                &shared.run,
                &pipeline,
                request_id,
                "invalid_request",
                caller.as_deref(),
            )
            .await;
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &message,
                field.as_deref(),
                request_id,
            );
        }
    };
    if let Some(meta) = &call.metadata {
        debug!(metadata = %serde_json::Value::Object(meta.clone()), "request metadata");
    }
    let stream = call.stream;
    let admission = run::spawn(
        &shared.run,
        pipeline,
        RunRequest {
            request_id: request_id.to_string(),
            messages: call.messages,
            max_tokens: call.max_tokens,
            caller,
            trace,
            ..RunRequest::default()
        },
    );
    let admission = match admission.await {
        Ok(a) => a,
        Err(_) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the request ended unexpectedly",
                None,
                request_id,
            );
        }
    };
    match admission {
        Admission::Rejected(r) => rejection_response(&r, request_id, shared.run.ledger.now_ms()),
        Admission::Streaming(rx) if stream => event_stream(ResponseBody::Sse(sse::SseBody::new(
            rx,
            sse::Native::default(),
        ))),
        Admission::Streaming(rx) => collect_response(rx, request_id).await,
    }
}

/// A streaming response with the headers SSE needs through proxies.
/// `Connection` is dropped again for HTTP/2 in `handle`.
pub(crate) fn event_stream(body: ResponseBody) -> Response<ResponseBody> {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    resp
}

/// `stream: false`: gathers the events into one JSON document.
async fn collect_response(mut rx: EventReceiver, request_id: &str) -> Response<ResponseBody> {
    let mut text = String::new();
    let mut start = serde_json::Value::Null;
    let mut usage = serde_json::Value::Null;
    let mut error: Option<(ErrorCode, String)> = None;
    let mut finish = String::new();
    let mut tool_calls: Vec<serde_json::Value> = Vec::new();
    let mut refusal = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::ToolCall(call) => {
                let ToolCallEvent {
                    id,
                    name,
                    arguments,
                    round,
                    runs,
                } = *call;
                tool_calls.push(json!({"id": id, "name": name, "arguments": arguments, "round": round, "runs": runs}));
            }
            Event::ToolResult(result) => {
                let ToolResultEvent {
                    id,
                    ok,
                    rows,
                    truncated,
                    error,
                    ..
                } = *result;
                if let Some(call) = tool_calls.iter_mut().rev().find(|c| c["id"] == json!(id)) {
                    call["result"] =
                        json!({"ok": ok, "rows": rows, "truncated": truncated, "error": error});
                }
            }
            Event::Start(s) => {
                start = json!({"pipeline": s.pipeline, "provider": s.provider, "model": s.model});
            }
            Event::Delta(t) => text.push_str(&t),
            Event::Refusal(t) => refusal.push_str(&t),
            Event::ToolCallDelta(_)
            | Event::ToolCallEnd(_)
            | Event::Reasoning(_)
            | Event::ReasoningSignature(_)
            | Event::RedactedReasoning(_)
            | Event::Choice(_)
            | Event::ChoiceDone { .. }
            | Event::Logprobs(_)
            | Event::StopSequence(_) => {}
            Event::Usage(u) => usage = serde_json::to_value(u).unwrap_or_default(),
            Event::Error { code, message, .. } => error = Some((code, message)),
            Event::Done { finish_reason } => finish = finish_reason,
            Event::KeepAlive => {}
        }
    }
    let mut doc = json!({
        "request_id": request_id,
        "pipeline": start["pipeline"],
        "provider": start["provider"],
        "model": start["model"],
        "output": text,
        "finish_reason": finish,
        "usage": usage,
    });
    if !tool_calls.is_empty() {
        doc["tool_calls"] = serde_json::Value::Array(tool_calls);
    }
    if !refusal.is_empty() {
        doc["refusal"] = json!(refusal);
    }
    let status = match &error {
        None => StatusCode::OK,
        Some((code, message)) => {
            doc["error"] = json!({"code": code, "message": message});
            match code {
                // The answer is usable, just cut at the ceiling.
                ErrorCode::TokenCeiling => StatusCode::OK,
                code => rejection_status(*code),
            }
        }
    };
    json_response(status, doc)
}
