//! `POST /v1/chat/completions`: the OpenAI wire format on top of the same
//! pipelines, so the official OpenAI SDKs work as clients. `model` names a
//! pipeline; its ceiling, timeouts, tools (run server-side), retries and
//! budgets apply exactly as on `/v1/pipelines/{name}`. Errors use OpenAI's
//! error shape; a failure after the stream started is a `data:` event with
//! an `error` object, which the SDKs raise.

use bytes::{BufMut, BytesMut};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::sse::EventBody;
use super::{ResponseBody, Shared, json_response, read_json_body};
use crate::provider::{Message, Role};
use crate::run::{
    self, Admission, ErrorCode, Event, EventReceiver, Rejection, RunRequest, UsageReport,
};

/// An OpenAI-shaped error response.
fn openai_error(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response<ResponseBody> {
    json_response(
        status,
        json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
    )
}

/// A request OpenAI would answer with 400 `invalid_request_error`.
struct Invalid {
    message: String,
    param: Option<String>,
}

fn invalid(message: &str, param: Option<&str>) -> Invalid {
    Invalid {
        message: message.to_string(),
        param: param.map(str::to_string),
    }
}

/// `GET /v1/models`: the pipelines, as OpenAI models.
pub(super) fn models(shared: &Shared) -> Response<ResponseBody> {
    let data: Vec<Value> = shared
        .pipelines
        .keys()
        .map(|name| json!({"id": name, "object": "model", "created": 0, "owned_by": "sluice"}))
        .collect();
    json_response(StatusCode::OK, json!({"object": "list", "data": data}))
}

/// A validated chat-completions request.
struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    max_tokens: Option<u32>,
    stream: bool,
    include_usage: bool,
}

fn text_of(content: &Value, i: usize) -> Result<String, Invalid> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        // The array form: text parts only.
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match (p["type"].as_str(), p["text"].as_str()) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => {
                        return Err(invalid(
                            "only text content parts are supported",
                            Some(&format!("messages[{i}].content")),
                        ));
                    }
                }
            }
            Ok(out)
        }
        _ => Err(invalid(
            "content must be a string or an array of text parts",
            Some(&format!("messages[{i}].content")),
        )),
    }
}

fn parse(body: &[u8]) -> Result<ChatRequest, Invalid> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(&format!("request body is not valid JSON: {e}"), None))?;
    let Some(obj) = v.as_object() else {
        return Err(invalid("request body must be a JSON object", None));
    };
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            invalid(
                "you must provide a model parameter (the pipeline's name)",
                Some("model"),
            )
        })?
        .to_string();
    // Tools are the pipeline's, run server-side; a client's own would
    // silently never be called.
    for field in ["tools", "functions", "tool_choice", "function_call"] {
        if obj.get(field).is_some_and(|v| !v.is_null()) {
            return Err(invalid(
                &format!(
                    "\"{field}\" is not supported: a pipeline declares its own tools and runs them"
                ),
                Some(field),
            ));
        }
    }
    if obj.get("n").and_then(Value::as_u64).is_some_and(|n| n != 1) {
        return Err(invalid("only n = 1 is supported", Some("n")));
    }
    let Some(items) = obj.get("messages").and_then(Value::as_array) else {
        return Err(invalid("messages must be an array", Some("messages")));
    };
    if items.is_empty() {
        return Err(invalid("messages must not be empty", Some("messages")));
    }
    let mut messages = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let role = match m["role"].as_str() {
            Some("system" | "developer") => Role::System,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some(other) => {
                return Err(invalid(
                    &format!(
                        "unsupported role \"{other}\", expected system, developer, user or assistant"
                    ),
                    Some(&format!("messages[{i}].role")),
                ));
            }
            None => {
                return Err(invalid(
                    "each message needs a role",
                    Some(&format!("messages[{i}].role")),
                ));
            }
        };
        messages.push(Message::new(role, text_of(&m["content"], i)?));
    }
    let max_tokens = match obj
        .get("max_completion_tokens")
        .or_else(|| obj.get("max_tokens"))
    {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 && n <= u64::from(u32::MAX) => Some(n as u32),
            _ => {
                return Err(invalid(
                    "max_tokens must be a positive integer",
                    Some("max_tokens"),
                ));
            }
        },
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("stream must be a boolean", Some("stream"))),
    };
    let include_usage = obj
        .get("stream_options")
        .and_then(|o| o["include_usage"].as_bool())
        .unwrap_or(false);
    Ok(ChatRequest {
        model,
        messages,
        max_tokens,
        stream,
        include_usage,
    })
}

/// HTTP status, OpenAI error type, for a Sluice error code.
fn status_of(code: ErrorCode) -> (StatusCode, &'static str) {
    match code {
        c if c.is_timeout() => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        ErrorCode::BudgetExhausted => (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota"),
        ErrorCode::UpstreamRateLimited | ErrorCode::Shutdown => {
            (StatusCode::SERVICE_UNAVAILABLE, "server_error")
        }
        ErrorCode::TokenCeiling => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        ErrorCode::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        _ => (StatusCode::BAD_GATEWAY, "server_error"),
    }
}

fn rejection(r: &Rejection) -> Response<ResponseBody> {
    let (status, kind) = status_of(r.code);
    let mut resp = openai_error(status, &r.message, kind, None, Some(r.code.as_str()));
    super::set_retry_after(&mut resp, r.retry_after);
    resp
}

/// Sluice's finish reasons in OpenAI's vocabulary.
fn finish_reason(reason: &str) -> &str {
    match reason {
        "stop" | "length" | "content_filter" => reason,
        "tool_limit" => "length",
        _ => "stop",
    }
}

fn usage_json(u: &UsageReport) -> Value {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens})
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) async fn chat_completions(
    shared: &Shared,
    req: Request<Incoming>,
    request_id: &str,
) -> Response<ResponseBody> {
    let body = match read_json_body(
        req,
        shared.settings.max_body_bytes,
        shared.settings.connections.body_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => {
            return openai_error(
                e.status(),
                &e.to_string(),
                "invalid_request_error",
                None,
                None,
            );
        }
    };
    let chat = match parse(&body) {
        Ok(c) => c,
        Err(e) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                &e.message,
                "invalid_request_error",
                e.param.as_deref(),
                None,
            );
        }
    };
    let Some(pipeline) = shared.pipelines.get(&chat.model).cloned() else {
        return openai_error(
            StatusCode::NOT_FOUND,
            &format!(
                "The model `{}` does not exist: no pipeline has that name",
                chat.model
            ),
            "invalid_request_error",
            Some("model"),
            Some("model_not_found"),
        );
    };
    let admission = run::spawn(
        &shared.run,
        pipeline,
        RunRequest {
            request_id: request_id.to_string(),
            messages: chat.messages,
            max_tokens: chat.max_tokens,
        },
    );
    let rx = match admission.await {
        Ok(Admission::Streaming(rx)) => rx,
        Ok(Admission::Rejected(r)) => return rejection(&r),
        Err(_) => {
            return openai_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request ended unexpectedly",
                "server_error",
                None,
                None,
            );
        }
    };
    let id = format!("chatcmpl-{request_id}");
    if chat.stream {
        let encoder = ChatEncoder {
            id,
            model: chat.model,
            created: now_secs(),
            include_usage: chat.include_usage,
            usage: None,
            failed: false,
        };
        return super::event_stream(ResponseBody::Chat(EventBody::new(rx, encoder)));
    }
    collect(rx, id, chat.model).await
}

/// `stream: false`: one `chat.completion` object.
async fn collect(mut rx: EventReceiver, id: String, model: String) -> Response<ResponseBody> {
    let (mut text, mut usage, mut finish, mut error) =
        (String::new(), None, String::from("stop"), None);
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Delta(t) => text.push_str(&t),
            Event::Usage(u) => usage = Some(*u),
            Event::Error { code, message } => error = Some((code, message)),
            Event::Done { finish_reason } => finish = finish_reason,
            _ => {}
        }
    }
    // A ceiling cut is an answer (finish_reason "length"), not a failure.
    if let Some((code, message)) = error.filter(|(c, _)| *c != ErrorCode::TokenCeiling) {
        let (status, kind) = status_of(code);
        return openai_error(status, &message, kind, None, Some(code.as_str()));
    }
    json_response(
        StatusCode::OK,
        json!({
            "id": id,
            "object": "chat.completion",
            "created": now_secs(),
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason(&finish),
                "logprobs": null,
            }],
            "usage": usage.as_ref().map(usage_json),
        }),
    )
}

/// Run events re-encoded as `chat.completion.chunk`s.
pub struct ChatEncoder {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    usage: Option<UsageReport>,
    failed: bool,
}

impl ChatEncoder {
    fn data(buf: &mut BytesMut, v: &Value) {
        buf.put_slice(b"data: ");
        if serde_json::to_writer(buf.writer(), v).is_err() {
            buf.put_slice(b"{}");
        }
        buf.put_slice(b"\n\n");
    }

    fn chunk(&self, buf: &mut BytesMut, delta: Value, finish: Option<&str>) {
        let v = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        });
        Self::data(buf, &v);
    }

    fn encode_event(&mut self, ev: Event, buf: &mut BytesMut) {
        match ev {
            Event::Start(_) => self.chunk(buf, json!({"role": "assistant", "content": ""}), None),
            Event::Delta(text) => self.chunk(buf, json!({"content": text}), None),
            Event::Usage(u) => self.usage = Some(*u),
            Event::Error { code, message } if code != ErrorCode::TokenCeiling => {
                // The SDKs raise an APIError for a chunk carrying `error`.
                self.failed = true;
                let (_, kind) = status_of(code);
                Self::data(
                    buf,
                    &json!({"error": {"message": message, "type": kind, "param": null, "code": code.as_str()}}),
                );
            }
            Event::Done {
                finish_reason: reason,
            } => {
                if self.failed {
                    return;
                }
                let reason = finish_reason(&reason).to_string();
                self.chunk(buf, json!({}), Some(&reason));
                if self.include_usage
                    && let Some(u) = self.usage.take()
                {
                    let v = json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [], "usage": usage_json(&u),
                    });
                    Self::data(buf, &v);
                }
                buf.put_slice(b"data: [DONE]\n\n");
            }
            Event::KeepAlive => buf.put_slice(b": keep-alive\n\n"),
            // Tools run server-side; the client sees their effect in the answer.
            _ => {}
        }
    }
}

impl super::sse::Encoder for ChatEncoder {
    fn encode(&mut self, ev: Event, buf: &mut BytesMut) {
        self.encode_event(ev, buf);
    }
}

#[doc(hidden)]
#[path = "fuzzing.rs"]
pub mod fuzzing;
