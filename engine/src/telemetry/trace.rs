//! One request's spans and their attributes (OpenTelemetry GenAI semantic
//! conventions, and Sluice's own under `sluice.`).
//!
//! [`Trace`] is what `run` holds: `None` when traces are off or this
//! request was not sampled, so every method is one branch then.

use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue};
use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, Span};
use serde_json::{Value as Json, json};

use super::{Incoming, Telemetry};
use crate::provider::{Message, Part, Wire};
use crate::run::UsageReport;

/// Most bytes of a prompt or a completion exported as an attribute
/// (`capture_content`); what is longer is cut on a character boundary.
const CONTENT_MAX: usize = 32 << 10;

// GenAI semantic conventions.
const OPERATION: &str = "gen_ai.operation.name";
const PROVIDER: &str = "gen_ai.provider.name";
const REQUEST_MODEL: &str = "gen_ai.request.model";
const REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
const RESPONSE_MODEL: &str = "gen_ai.response.model";
const FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
const INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
const OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
const CACHE_READ_TOKENS: &str = "gen_ai.usage.cache_read.input_tokens";
const CACHE_WRITE_TOKENS: &str = "gen_ai.usage.cache_creation.input_tokens";
const INPUT_MESSAGES: &str = "gen_ai.input.messages";
const OUTPUT_MESSAGES: &str = "gen_ai.output.messages";
const TOOL_NAME: &str = "gen_ai.tool.name";
const TOOL_CALL_ID: &str = "gen_ai.tool.call.id";
const TOOL_TYPE: &str = "gen_ai.tool.type";
const ERROR_TYPE: &str = "error.type";
const HTTP_STATUS: &str = "http.response.status_code";

/// The provider as the GenAI conventions name it: by the API it speaks.
fn provider_name(wire: Option<Wire>) -> &'static str {
    match wire {
        Some(Wire::OpenAi) => "openai",
        Some(Wire::Anthropic) => "anthropic",
        None => "sluice.replay",
    }
}

fn kv(key: &'static str, value: impl Into<Value>) -> KeyValue {
    KeyValue::new(key, value)
}

fn string_list(one: &str) -> Value {
    Value::Array(Array::String(vec![StringValue::from(one.to_string())]))
}

fn fail(span: &mut Span, error_type: &str) {
    span.set_attribute(kv(ERROR_TYPE, error_type.to_string()));
    span.set_status(Status::error(error_type.to_string()));
}

/// Cut to at most `CONTENT_MAX` bytes, on a character boundary.
fn bounded(mut s: String) -> String {
    if s.len() > CONTENT_MAX {
        let mut end = CONTENT_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// A prompt as `gen_ai.input.messages` (JSON): text, tool calls and tool
/// results; images and reasoning are named, not copied.
fn messages_json(messages: &[Message]) -> String {
    let list: Vec<Json> = messages
        .iter()
        .map(|m| {
            let mut parts: Vec<Json> = m
                .content
                .iter()
                .map(|p| match p {
                    Part::Text(t) if m.tool_call_id.is_some() => {
                        json!({"type": "tool_call_response", "id": m.tool_call_id, "response": t})
                    }
                    Part::Text(t) => json!({"type": "text", "content": t}),
                    Part::Image { .. } => json!({"type": "image"}),
                    Part::Thinking { .. } | Part::RedactedThinking(_) => {
                        json!({"type": "reasoning"})
                    }
                })
                .collect();
            parts.extend(m.tool_calls.iter().map(|c| {
                json!({"type": "tool_call", "id": c.id, "name": c.name, "arguments": c.arguments})
            }));
            json!({"role": m.role, "parts": parts})
        })
        .collect();
    bounded(Json::Array(list).to_string())
}

/// The `traceparent` (and `tracestate`) headers of a span's context.
struct Headers(Vec<(HeaderName, HeaderValue)>);

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.push((k, v));
        }
    }
}

/// One model call about to be made.
pub(crate) struct CallInfo<'a> {
    /// The provider's name in `settings.yaml`.
    pub provider: &'a str,
    pub wire: Option<Wire>,
    pub model: &'a str,
    /// Try of this model, from 1.
    pub attempt: u32,
    /// 0 for the pipeline's own model (or its downgrade), then each
    /// fallback; None: the one that answered the request's first call.
    pub fallback: Option<usize>,
    /// Model call of the request's tool loop, from 1.
    pub round: u32,
    pub max_tokens: u32,
    pub prompt: &'a [Message],
}

/// How a request ended, for its span.
pub(crate) struct Outcome<'a> {
    /// The ledger status (`ok`, `timeout`, `client_closed`, ...).
    pub status: &'a str,
    /// Sluice's error code, when one ended it.
    pub error: Option<&'a str>,
    pub finish: &'a str,
    pub usage: Option<&'a UsageReport>,
    pub ttft: Option<Duration>,
    pub tool_calls: u32,
    pub rounds: u32,
}

impl<'a> Outcome<'a> {
    /// A request refused before any model call.
    pub(crate) fn refused(status: &'a str, error: &'a str) -> Outcome<'a> {
        Outcome {
            status,
            error: Some(error),
            finish: "error",
            usage: None,
            ttft: None,
            tool_calls: 0,
            rounds: 0,
        }
    }

    /// `error.type`: the error code, or the status of a request that ended
    /// otherwise than `ok` without one (a client that left).
    fn error_type(&self) -> Option<&str> {
        self.error.or((self.status != "ok").then_some(self.status))
    }
}

struct Active {
    tracer: SdkTracer,
    capture: bool,
    request: Span,
    /// The request span's context: the parent of every other span.
    cx: Context,
    /// The model call in flight.
    call: Option<Span>,
    /// What the model call in flight said (`capture_content`).
    output: String,
    /// The model that answered last, as the provider named it, and its
    /// provider's conventional name.
    response: Option<(String, &'static str)>,
    /// The fallback index of the last model call started.
    fallback: usize,
}

/// A request's spans; empty when traces are off or it is not sampled.
#[derive(Default)]
pub(crate) struct Trace(Option<Box<Active>>);

/// A tool execution's span.
pub(crate) struct ToolSpan(Option<Span>);

impl Telemetry {
    /// Starts the request span (SERVER) under the client's context.
    pub(crate) fn request(
        &self,
        incoming: &Incoming,
        pipeline: &str,
        request_id: &str,
        model: &str,
        key: Option<&str>,
    ) -> Trace {
        let mut attributes = vec![
            kv(OPERATION, "chat"),
            kv(REQUEST_MODEL, model.to_string()),
            kv("sluice.pipeline", pipeline.to_string()),
            kv("sluice.request_id", request_id.to_string()),
        ];
        if let Some(key) = key {
            attributes.push(kv("sluice.key", key.to_string()));
        }
        let request = self
            .tracer
            .span_builder(format!("chat {pipeline}"))
            .with_kind(SpanKind::Server)
            .with_start_time(incoming.at)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &incoming.parent);
        if !request.is_recording() {
            return Trace(None);
        }
        let cx = Context::new().with_remote_span_context(request.span_context().clone());
        Trace(Some(Box::new(Active {
            tracer: self.tracer.clone(),
            capture: self.capture_content,
            request,
            cx,
            call: None,
            output: String::new(),
            response: None,
            fallback: 0,
        })))
    }
}

impl Trace {
    pub(crate) const OFF: Trace = Trace(None);

    #[inline]
    pub(crate) fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The completion tokens each model call may generate.
    pub(crate) fn max_tokens(&mut self, max_tokens: u32) {
        if let Some(a) = &mut self.0 {
            a.request
                .set_attribute(kv(REQUEST_MAX_TOKENS, i64::from(max_tokens)));
        }
    }

    /// Starts a model call's span (CLIENT); returns the headers that carry
    /// its context to the provider (none when traces are off).
    pub(crate) fn call_start(&mut self, call: CallInfo<'_>) -> Vec<(HeaderName, HeaderValue)> {
        let Some(a) = &mut self.0 else {
            return Vec::new();
        };
        // A call never left open; should one be, it ends here, unmarked.
        a.call = None;
        let fallback = call.fallback.unwrap_or(a.fallback);
        a.fallback = fallback;
        let mut attributes = vec![
            kv(OPERATION, "chat"),
            kv(PROVIDER, provider_name(call.wire)),
            kv(REQUEST_MODEL, call.model.to_string()),
            kv(REQUEST_MAX_TOKENS, i64::from(call.max_tokens)),
            kv("sluice.provider", call.provider.to_string()),
            kv("sluice.attempt", i64::from(call.attempt)),
            kv("sluice.fallback", fallback as i64),
            kv("sluice.round", i64::from(call.round)),
        ];
        if a.capture {
            attributes.push(kv(INPUT_MESSAGES, messages_json(call.prompt)));
        }
        let span = a
            .tracer
            .span_builder(format!("chat {}", call.model))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&a.tracer, &a.cx);
        let mut headers = Headers(Vec::with_capacity(1));
        let cx = Context::new().with_remote_span_context(span.span_context().clone());
        TraceContextPropagator::new().inject_context(&cx, &mut headers);
        a.call = Some(span);
        a.output.clear();
        headers.0
    }

    /// The model call in flight answered: its first chunk came, naming
    /// `model` (the provider's own name for it) when it did.
    pub(crate) fn call_answered(&mut self, model: &str, wire: Option<Wire>) {
        if let Some(a) = &mut self.0 {
            if let Some(call) = &mut a.call {
                call.set_attribute(kv(RESPONSE_MODEL, model.to_string()));
            }
            a.response = Some((model.to_string(), provider_name(wire)));
        }
    }

    /// The model call in flight failed before its first token.
    pub(crate) fn call_failed(&mut self, error_type: &str, upstream_status: Option<u16>) {
        if let Some(a) = &mut self.0
            && let Some(mut call) = a.call.take()
        {
            if let Some(status) = upstream_status {
                call.set_attribute(kv(HTTP_STATUS, i64::from(status)));
            }
            fail(&mut call, error_type);
            call.end();
        }
    }

    /// Text the model generated (kept only with `capture_content`).
    #[inline]
    pub(crate) fn text(&mut self, s: &str) {
        if let Some(a) = &mut self.0
            && a.capture
            && a.output.len() < CONTENT_MAX
        {
            a.output.push_str(s);
        }
    }

    /// The model call in flight ended: its finish reason, its usage
    /// `(input, output, estimated)` and the error that ended it.
    pub(crate) fn call_end(
        &mut self,
        finish: Option<&str>,
        usage: Option<(u64, u64, bool)>,
        error_type: Option<&str>,
    ) {
        if let Some(a) = &mut self.0 {
            a.end_call(finish, usage, error_type);
        }
    }

    /// Starts a tool execution's span (INTERNAL).
    pub(crate) fn tool(&self, name: &str, call_id: &str) -> ToolSpan {
        let Some(a) = &self.0 else {
            return ToolSpan(None);
        };
        let span = a
            .tracer
            .span_builder(format!("execute_tool {name}"))
            .with_kind(SpanKind::Internal)
            .with_attributes([
                kv(OPERATION, "execute_tool"),
                kv(TOOL_NAME, name.to_string()),
                kv(TOOL_CALL_ID, call_id.to_string()),
                kv(TOOL_TYPE, "function"),
            ])
            .start_with_context(&a.tracer, &a.cx);
        ToolSpan(Some(span))
    }

    /// Ends the request span (and a model call still open) with how the
    /// request ended.
    pub(crate) fn finish(&mut self, o: Outcome<'_>) {
        let Some(mut a) = self.0.take() else { return };
        let error_type = o.error_type();
        a.end_call(None, None, error_type);
        let span = &mut a.request;
        let mut attributes: Vec<KeyValue> = Vec::with_capacity(12);
        attributes.push(kv("sluice.status", o.status.to_string()));
        attributes.push(KeyValue::new(FINISH_REASONS, string_list(o.finish)));
        if let Some((model, provider)) = a.response.take() {
            attributes.push(kv(RESPONSE_MODEL, model));
            attributes.push(kv(PROVIDER, provider));
        }
        if let Some(u) = o.usage {
            attributes.push(kv(INPUT_TOKENS, u.prompt_tokens as i64));
            attributes.push(kv(OUTPUT_TOKENS, u.completion_tokens as i64));
            if u.cache_read_tokens > 0 {
                attributes.push(kv(CACHE_READ_TOKENS, u.cache_read_tokens as i64));
            }
            if u.cache_write_tokens > 0 {
                attributes.push(kv(CACHE_WRITE_TOKENS, u.cache_write_tokens as i64));
            }
            attributes.push(kv("sluice.usage.estimated", u.estimated));
            attributes.push(kv("sluice.cost_micros", u.cost_micros));
        }
        if let Some(ttft) = o.ttft {
            attributes.push(kv(
                "sluice.time_to_first_token_ms",
                ttft.as_secs_f64() * 1000.0,
            ));
        }
        if o.rounds > 1 {
            attributes.push(kv("sluice.rounds", i64::from(o.rounds)));
        }
        if o.tool_calls > 0 {
            attributes.push(kv("sluice.tool_calls", i64::from(o.tool_calls)));
        }
        span.set_attributes(attributes);
        if let Some(e) = error_type {
            fail(span, e);
        }
        span.end_with_timestamp(SystemTime::now());
    }
}

impl Active {
    fn end_call(
        &mut self,
        finish: Option<&str>,
        usage: Option<(u64, u64, bool)>,
        error_type: Option<&str>,
    ) {
        let Some(mut call) = self.call.take() else {
            return;
        };
        if let Some(finish) = finish {
            call.set_attribute(KeyValue::new(FINISH_REASONS, string_list(finish)));
        }
        if let Some((input, output, estimated)) = usage {
            call.set_attribute(kv(INPUT_TOKENS, input as i64));
            call.set_attribute(kv(OUTPUT_TOKENS, output as i64));
            call.set_attribute(kv("sluice.usage.estimated", estimated));
        }
        if self.capture {
            let text = bounded(std::mem::take(&mut self.output));
            let out = json!([{
                "role": "assistant",
                "parts": [{"type": "text", "content": text}],
                "finish_reason": finish,
            }]);
            call.set_attribute(kv(OUTPUT_MESSAGES, out.to_string()));
        }
        if let Some(e) = error_type {
            fail(&mut call, e);
        }
        call.end();
    }
}

impl ToolSpan {
    /// Ends the span with what the tool did.
    pub(crate) fn end(self, ok: bool, error: Option<&str>, rows: usize, truncated: bool) {
        let Some(mut span) = self.0 else { return };
        span.set_attribute(kv("sluice.tool.rows", rows as i64));
        if truncated {
            span.set_attribute(kv("sluice.tool.truncated", true));
        }
        if !ok {
            span.set_attribute(kv(
                "sluice.tool.error",
                error.unwrap_or("error").to_string(),
            ));
            fail(&mut span, "tool_error");
        }
        span.end();
    }
}
