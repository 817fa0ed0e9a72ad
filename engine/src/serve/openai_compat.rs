//! `POST /v1/chat/completions`: the OpenAI wire format on top of the same
//! pipelines, so the official OpenAI SDKs work as clients. `model` names a
//! pipeline; its ceiling, timeouts, tools (run server-side), retries and
//! budgets apply exactly as on `/v1/pipelines/{name}`. Errors use OpenAI's
//! error shape; a failure after the stream started is a `data:` event with
//! an `error` object, which the SDKs raise.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::openai_request::{self, Invalid, invalid};
use super::sse::EventBody;
use super::{ResponseBody, Shared, json_response, read_json_body};
use crate::auth::ApiKey;
use crate::compile::Pipeline;
use crate::compile::clients::FieldNames;
use crate::provider::{Message, Params, ToolChoice, ToolSpec};
use crate::run::{
    self, Admission, ErrorCode, Event, EventReceiver, Rejection, RunRequest, ToolCallDelta,
    UsageReport,
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

/// `GET /v1/models`: the pipelines, as OpenAI models.
pub(super) fn models(shared: &Shared, caller: Option<&ApiKey>) -> Response<ResponseBody> {
    let data: Vec<Value> = shared
        .pipelines
        .keys()
        .filter(|name| super::auth::lists(caller, name))
        .map(|name| json!({"id": name, "object": "model", "created": 0, "owned_by": "sluice"}))
        .collect();
    json_response(StatusCode::OK, json!({"object": "list", "data": data}))
}

/// HTTP status, OpenAI error type, for a Sluice error code.
fn status_of(code: ErrorCode) -> (StatusCode, &'static str) {
    match code {
        c if c.is_timeout() => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        ErrorCode::BudgetExhausted => (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota"),
        ErrorCode::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded"),
        ErrorCode::UpstreamRateLimited | ErrorCode::Shutdown => {
            (StatusCode::SERVICE_UNAVAILABLE, "server_error")
        }
        ErrorCode::TokenCeiling => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        ErrorCode::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        _ => (StatusCode::BAD_GATEWAY, "server_error"),
    }
}

fn rejection(r: &Rejection, now_ms: i64) -> Response<ResponseBody> {
    let (status, kind) = status_of(r.code);
    // OpenAI's own code for its rate limits, which clients look for.
    let code = match r.code {
        ErrorCode::RateLimited => "rate_limit_exceeded",
        c => c.as_str(),
    };
    let mut resp = openai_error(status, &r.message, kind, None, Some(code));
    super::set_retry_after(&mut resp, r.retry_after);
    super::set_rate_headers(&mut resp, r.rate_limit.as_ref(), false, now_ms);
    resp
}

/// Sluice's finish reasons in OpenAI's vocabulary.
fn finish_reason(reason: &str) -> &str {
    match reason {
        "stop" | "length" | "content_filter" | "tool_calls" => reason,
        "tool_limit" => "length",
        _ => "stop",
    }
}

/// What the request asks that this pipeline cannot do: a tool named like
/// one of its own, a tool choice naming no tool, what its `clients:`
/// rules do not allow, a parameter a provider that may answer has no
/// equivalent for. `name_field` names a tool's name field in the
/// client's API (shared with `/v1/messages`).
pub(super) fn check_with_pipeline(
    pipeline: &Pipeline,
    tools: &[ToolSpec],
    params: &Params,
    messages: &[Message],
    names: &FieldNames,
) -> Result<(), Invalid> {
    for (i, t) in tools.iter().enumerate() {
        if pipeline.tools.iter().any(|own| own.name() == t.name) {
            return Err(invalid(
                format!(
                    "pipeline \"{}\" has a tool of its own named \"{}\"; give yours another name",
                    pipeline.name, t.name
                ),
                Some(&names.tool_name(i)),
            ));
        }
    }
    // Both APIs refuse these without tools; say so here, by name, rather
    // than pass on the provider's refusal as a 502.
    let no_tools = tools.is_empty() && pipeline.tools.is_empty();
    if no_tools
        && matches!(
            params.tool_choice,
            Some(ToolChoice::Required | ToolChoice::Tool(_))
        )
    {
        return Err(invalid(
            format!(
                "tool_choice asks for a tool call, but neither the request nor pipeline \"{}\" offers a tool",
                pipeline.name
            ),
            Some("tool_choice"),
        ));
    }
    // Anthropic takes extended thinking with tool_choice auto or none
    // only: refused here, not as the provider's 400 relayed as a 502.
    if params.thinking.is_some()
        && matches!(
            params.tool_choice,
            Some(ToolChoice::Required | ToolChoice::Tool(_))
        )
    {
        let field = names.field("tool_choice");
        return Err(invalid(
            format!(
                "{field}: a forced tool choice cannot be combined with thinking; with thinking the model may only be left to choose (auto) or told to call none"
            ),
            Some(&field),
        ));
    }
    if no_tools && params.parallel_tool_calls.is_some() {
        let field = names.field("parallel_tool_calls");
        return Err(invalid(
            format!("{field} is only allowed when tools are offered"),
            Some(&field),
        ));
    }
    if let Some(ToolChoice::Tool(name)) = &params.tool_choice
        && !tools.iter().any(|t| &t.name == name)
        && !pipeline.tools.iter().any(|t| t.name() == name)
    {
        let field = names.chosen_tool();
        return Err(invalid(
            format!(
                "{field} names \"{name}\", which is neither among the request's tools nor pipeline \"{}\"'s",
                pipeline.name
            ),
            Some(field),
        ));
    }
    run::check_request(pipeline, params, tools, messages, names)
        .map_err(|(field, message)| invalid(message, Some(&field)))
}

fn usage_json(u: &UsageReport) -> Value {
    let mut v = json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens});
    if u.cache_read_tokens > 0 {
        // OpenAI's shape; cache writes have no field there.
        v["prompt_tokens_details"] = json!({ "cached_tokens": u.cache_read_tokens });
    }
    v
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
    caller: Option<Arc<ApiKey>>,
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
            return openai_error(
                e.status(),
                &e.to_string(),
                "invalid_request_error",
                None,
                None,
            );
        }
    };
    let chat = match openai_request::parse(&body) {
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
    if let Err(denied) = super::auth::may_call(caller.as_deref(), &chat.model) {
        return super::auth::refuse(shared, denied, super::auth::Api::OpenAi, request_id);
    }
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
    let choices = chat.params.choices();
    let run_request = RunRequest {
        request_id: request_id.to_string(),
        messages: chat.messages,
        max_tokens: chat.max_tokens,
        params: chat.params,
        tools: chat.tools,
        caller,
        trace,
    };
    if let Err(e) = check_with_pipeline(
        &pipeline,
        &run_request.tools,
        &run_request.params,
        &run_request.messages,
        &FieldNames::default(),
    ) {
        run::record_invalid(
            &shared.run,
            &pipeline,
            request_id,
            "invalid_request",
            run_request.caller.as_deref(),
        )
        .await;
        return openai_error(
            StatusCode::BAD_REQUEST,
            &e.message,
            "invalid_request_error",
            e.param.as_deref(),
            None,
        );
    }
    let admission = run::spawn(&shared.run, pipeline, run_request);
    let rx = match admission.await {
        Ok(Admission::Streaming(rx)) => rx,
        Ok(Admission::Rejected(r)) => return rejection(&r, shared.run.ledger.now_ms()),
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
            n: choices,
            choice: 0,
            finished: 0,
            logprobs: None,
        };
        return super::event_stream(ResponseBody::Chat(EventBody::new(rx, encoder)));
    }
    collect(rx, id, chat.model, choices).await
}

/// Tool calls for the client, assembled from their streamed pieces.
#[derive(Default)]
struct Calls(Vec<(String, String, String)>);

impl Calls {
    fn push(&mut self, d: ToolCallDelta) {
        let i = d.index as usize;
        if i >= self.0.len() {
            self.0.resize_with(i + 1, Default::default);
        }
        let (id, name, arguments) = &mut self.0[i];
        if let Some(x) = d.id {
            *id = x;
        }
        if let Some(x) = d.name {
            *name = x;
        }
        arguments.push_str(&d.arguments);
    }

    fn to_json(&self) -> Option<Value> {
        (!self.0.is_empty()).then(|| {
            Value::Array(
                self.0
                    .iter()
                    .map(|(id, name, arguments)| {
                        json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
                    })
                    .collect(),
            )
        })
    }
}

/// One choice of a `chat.completion`, as its events arrive.
#[derive(Default)]
struct Answer {
    text: String,
    refusal: String,
    calls: Calls,
    finish: Option<String>,
    /// The provider's logprobs, concatenated as OpenAI does: every
    /// `content` entry, then every `refusal` entry (None: none came).
    logprobs: Option<(Vec<Value>, Vec<Value>)>,
}

impl Answer {
    fn add_logprobs(&mut self, lp: Value) {
        let (content, refusal) = self.logprobs.get_or_insert_default();
        if let Value::Object(mut o) = lp {
            for (key, into) in [("content", content), ("refusal", refusal)] {
                if let Some(Value::Array(a)) = o.remove(key) {
                    into.extend(a);
                }
            }
        }
    }

    fn into_json(self, index: usize, done: &str) -> Value {
        let Answer {
            text,
            refusal,
            calls,
            finish,
            logprobs,
        } = self;
        let mut message = json!({
            "role": "assistant",
            "content": if text.is_empty() && (!refusal.is_empty() || !calls.0.is_empty()) { Value::Null } else { json!(text) },
            "refusal": if refusal.is_empty() { Value::Null } else { json!(refusal) },
        });
        if let Some(c) = calls.to_json() {
            message["tool_calls"] = c;
        }
        let array = |v: Vec<Value>| {
            if v.is_empty() {
                Value::Null
            } else {
                Value::Array(v)
            }
        };
        let logprobs = match logprobs {
            Some((content, refusal)) => {
                json!({"content": array(content), "refusal": array(refusal)})
            }
            None => Value::Null,
        };
        json!({
            "index": index,
            "message": message,
            // A choice the call ended before it finished ends as the call did.
            "finish_reason": finish_reason(finish.as_deref().unwrap_or(done)),
            "logprobs": logprobs,
        })
    }
}

/// Most bytes of logprobs a `stream: false` answer holds: streamed, they
/// pass through; gathered, `n` choices of 20 alternatives per token would
/// otherwise hold gigabytes.
const MAX_HELD_LOGPROBS: usize = 8 << 20;

/// `stream: false`: one `chat.completion` object, with `n` choices.
async fn collect(
    mut rx: EventReceiver,
    id: String,
    model: String,
    n: u32,
) -> Response<ResponseBody> {
    let (mut usage, mut finish, mut error) = (None, String::from("stop"), None);
    let mut model = model;
    let mut answers: Vec<Answer> = (0..n.max(1)).map(|_| Answer::default()).collect();
    // The choice the events are for (the run names none past `n`).
    let mut current = 0;
    let mut held_logprobs = 0usize;
    while let Some(ev) = rx.recv().await {
        if let Event::Logprobs(lp) = &ev {
            held_logprobs += serde_json::to_string(lp).map_or(0, |s| s.len());
            if held_logprobs > MAX_HELD_LOGPROBS {
                // Dropping the receiver ends the run (and its upstream).
                return openai_error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "the answer's logprobs passed {} MiB; ask for them with \"stream\": true, which relays them without holding them",
                        MAX_HELD_LOGPROBS >> 20
                    ),
                    "invalid_request_error",
                    Some("logprobs"),
                    None,
                );
            }
        }
        let answer = &mut answers[current];
        match ev {
            Event::Start(s) => model = s.model,
            Event::Delta(t) => answer.text.push_str(&t),
            Event::Refusal(t) => answer.refusal.push_str(&t),
            Event::ToolCallDelta(d) => answer.calls.push(*d),
            Event::Logprobs(lp) => answer.add_logprobs(*lp),
            Event::Choice(c) => current = (c as usize).min(answers.len() - 1),
            Event::ChoiceDone {
                choice,
                finish_reason,
            } => {
                if let Some(a) = answers.get_mut(choice as usize) {
                    a.finish = Some(finish_reason);
                }
            }
            Event::Usage(u) => usage = Some(*u),
            Event::Error { code, message, .. } => error = Some((code, message)),
            Event::Done { finish_reason } => finish = finish_reason,
            _ => {}
        }
    }
    // A ceiling cut is an answer (finish_reason "length"), not a failure.
    if let Some((code, message)) = error.filter(|(c, _)| *c != ErrorCode::TokenCeiling) {
        let (status, kind) = status_of(code);
        return openai_error(status, &message, kind, None, Some(code.as_str()));
    }
    let choices: Vec<Value> = answers
        .into_iter()
        .enumerate()
        .map(|(i, a)| a.into_json(i, &finish))
        .collect();
    json_response(
        StatusCode::OK,
        json!({
            "id": id,
            "object": "chat.completion",
            "created": now_secs(),
            "model": model,
            "choices": choices,
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
    /// How many choices the answer has, the one the events are for, and
    /// which have sent their finish reason (n is at most 128).
    n: u32,
    choice: u32,
    finished: u128,
    /// Log probabilities waiting for the text they describe.
    logprobs: Option<Box<Value>>,
}

impl ChatEncoder {
    fn data(buf: &mut BytesMut, v: &Value) {
        buf.put_slice(b"data: ");
        if serde_json::to_writer(buf.writer(), v).is_err() {
            buf.put_slice(b"{}");
        }
        buf.put_slice(b"\n\n");
    }

    /// A chunk of the current choice, with the log probabilities that
    /// wait for it.
    fn chunk(&mut self, buf: &mut BytesMut, delta: Value, finish: Option<&str>) {
        let logprobs = self.logprobs.take();
        self.chunk_of(buf, self.choice, delta, finish, logprobs);
    }

    fn chunk_of(
        &self,
        buf: &mut BytesMut,
        index: u32,
        delta: Value,
        finish: Option<&str>,
        logprobs: Option<Box<Value>>,
    ) {
        let logprobs = logprobs.map_or(Value::Null, |l| *l);
        let v = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}],
        });
        Self::data(buf, &v);
    }

    /// Log probabilities no text came for, sent alone.
    fn flush_logprobs(&mut self, buf: &mut BytesMut) {
        if self.logprobs.is_some() {
            self.chunk(buf, json!({}), None);
        }
    }

    /// The finish chunk of `index` (once per choice).
    fn finish(&mut self, buf: &mut BytesMut, index: u32, reason: &str) {
        let bit = 1u128.checked_shl(index).unwrap_or(0);
        if self.finished & bit != 0 {
            return;
        }
        self.finished |= bit;
        if index == self.choice {
            self.flush_logprobs(buf);
        }
        let reason = finish_reason(reason).to_string();
        self.chunk_of(buf, index, json!({}), Some(&reason), None);
    }

    fn encode_event(&mut self, ev: Event, buf: &mut BytesMut) {
        match ev {
            Event::Start(start) => {
                // The model that answers, as its provider names it.
                self.model = start.model;
                for index in 0..self.n.max(1) {
                    let role = json!({"role": "assistant", "content": ""});
                    self.chunk_of(buf, index, role, None, None);
                }
            }
            Event::Choice(c) => {
                self.flush_logprobs(buf);
                self.choice = c;
            }
            Event::Logprobs(lp) => {
                self.flush_logprobs(buf);
                self.logprobs = Some(lp);
            }
            Event::ChoiceDone {
                choice,
                finish_reason,
            } => self.finish(buf, choice, &finish_reason),
            Event::Delta(text) => self.chunk(buf, json!({"content": text}), None),
            Event::Refusal(text) => self.chunk(buf, json!({"refusal": text}), None),
            Event::ToolCallDelta(d) => {
                let ToolCallDelta {
                    index,
                    id,
                    name,
                    arguments,
                } = *d;
                let mut call = json!({"index": index, "function": {"arguments": arguments}});
                if let Some(id) = id {
                    call["id"] = json!(id);
                    call["type"] = json!("function");
                }
                if let Some(name) = name {
                    call["function"]["name"] = json!(name);
                }
                self.chunk(buf, json!({ "tool_calls": [call] }), None);
            }
            Event::Usage(u) => self.usage = Some(*u),
            Event::Error { code, message, .. } if code != ErrorCode::TokenCeiling => {
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
                // Choices that did not finish on their own end as the
                // call did (with one choice, that is its reason).
                for index in 0..self.n.max(1) {
                    self.finish(buf, index, &reason);
                }
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
            // Chat Completions says `stop` without naming the sequence.
            Event::StopSequence(_) => {}
            // The pipeline's own tools run inside Sluice: the client sees
            // their effect in the answer. The client's calls came as
            // `ToolCallDelta`s.
            // Reasoning is not part of Chat Completions' answer, and a
            // call's pieces need no end of their own.
            Event::ToolCall(_)
            | Event::ToolCallEnd(_)
            | Event::ToolResult(_)
            | Event::Error { .. }
            | Event::Reasoning(_)
            | Event::ReasoningSignature(_)
            | Event::RedactedReasoning(_) => {}
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
