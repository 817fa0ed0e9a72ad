//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's
//! Messages API on top of the same pipelines, so the official Anthropic
//! SDKs work as clients. `model` names a pipeline; its ceiling, timeouts,
//! tools (run server-side), retries and budgets apply exactly as on
//! `/v1/pipelines/{name}`. Errors use Anthropic's error shape; a failure
//! after the stream started is an `error` event, which the SDKs raise.
//!
//! One encoder (`anthropic_stream.rs`) turns run events into Messages
//! stream events; a streaming answer writes them as SSE, and a
//! non-streaming answer is those same events assembled into one `message`
//! ([`Assembled`]), so the two cannot disagree.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::anthropic_request::{self, Endpoint, MessagesRequest};
use super::anthropic_stream::{Assembled, MessagesEncoder};
use super::openai_compat::check_with_pipeline;
use super::sse::EventBody;
use super::{ResponseBody, Shared, json_response, read_json_body};
use crate::auth::ApiKey;
use crate::compile::clients::FieldNames;
use crate::provider::ErrorKind;
use crate::run::{self, Admission, ErrorCode, Event, EventReceiver, RunRequest};
use crate::tokens;

/// An Anthropic-shaped error: `{"type":"error","error":{...},"request_id"}`.
fn anthropic_error(status: StatusCode, message: &str, request_id: &str) -> Response<ResponseBody> {
    anthropic_error_of(status, None, message, request_id)
}

/// [`anthropic_error`] of the provider's own kind, when it named one.
fn anthropic_error_of(
    status: StatusCode,
    kind: Option<ErrorKind>,
    message: &str,
    request_id: &str,
) -> Response<ResponseBody> {
    let kind = kind.map_or_else(|| error_type(status), ErrorKind::as_str);
    json_response(
        status,
        json!({
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": request_id,
        }),
    )
}

/// Anthropic's error type for an HTTP status.
pub(super) fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 408 | 411 | 415 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// The HTTP status of a Sluice error code on this route.
pub(super) fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        c if c.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
        // The budget, or the provider's own rate limit: retry later.
        ErrorCode::BudgetExhausted | ErrorCode::RateLimited | ErrorCode::UpstreamRateLimited => {
            StatusCode::TOO_MANY_REQUESTS
        }
        // Anthropic's "overloaded" (529): the SDKs retry it.
        ErrorCode::Shutdown => StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        ErrorCode::TokenCeiling => StatusCode::BAD_REQUEST,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// Reads the body and finds the pipeline: the request, or the error answer.
async fn read(
    shared: &Shared,
    req: Request<Incoming>,
    request_id: &str,
    endpoint: Endpoint,
    caller: Option<&ApiKey>,
) -> Result<(MessagesRequest, std::sync::Arc<crate::compile::Pipeline>), Response<ResponseBody>> {
    let body = read_json_body(
        req,
        shared.settings.max_body_bytes,
        shared.settings.connections.body_timeout,
    )
    .await
    .map_err(|e| anthropic_error(e.status(), &e.to_string(), request_id))?;
    let msg = anthropic_request::parse(&body, endpoint)
        .map_err(|e| anthropic_error(StatusCode::BAD_REQUEST, &e.message, request_id))?;
    super::auth::may_call(caller, &msg.model).map_err(|denied| {
        super::auth::refuse(shared, denied, super::auth::Api::Anthropic, request_id)
    })?;
    let Some(pipeline) = shared.pipelines.get(&msg.model).cloned() else {
        return Err(anthropic_error(
            StatusCode::NOT_FOUND,
            &format!(
                "model: no pipeline named \"{}\"; GET /v1/models lists them",
                msg.model
            ),
            request_id,
        ));
    };
    let names = FieldNames {
        cache_control: msg.cache_control_at.clone(),
        ..FieldNames::messages()
    };
    if let Err(e) = check_with_pipeline(&pipeline, &msg.tools, &msg.params, &msg.messages, &names) {
        run::record_invalid(
            &shared.run,
            &pipeline,
            request_id,
            "invalid_request",
            caller,
        )
        .await;
        let message = match &e.param {
            Some(p) if !e.message.starts_with(p.as_str()) => format!("{p}: {}", e.message),
            _ => e.message,
        };
        return Err(anthropic_error(
            StatusCode::BAD_REQUEST,
            &message,
            request_id,
        ));
    }
    if let Some(message) = thinking_over_ceiling(&msg, &pipeline) {
        run::record_invalid(
            &shared.run,
            &pipeline,
            request_id,
            "invalid_request",
            caller,
        )
        .await;
        return Err(anthropic_error(
            StatusCode::BAD_REQUEST,
            &message,
            request_id,
        ));
    }
    Ok((msg, pipeline))
}

/// Anthropic refuses a thinking budget that is not below `max_tokens`.
/// The provider gets `max_tokens` clamped to the pipeline's ceiling, so a
/// budget the client's own `max_tokens` allowed may not fit under it: say
/// so here, naming the field and the ceiling, rather than send a request
/// the provider refuses.
fn thinking_over_ceiling(
    msg: &MessagesRequest,
    pipeline: &crate::compile::Pipeline,
) -> Option<String> {
    let asked = msg.max_tokens?;
    let thinking = msg.params.thinking.as_ref()?;
    if thinking["type"] != "enabled" {
        return None;
    }
    let budget = thinking["budget_tokens"].as_u64()?;
    let sent = asked.min(pipeline.max_tokens);
    if budget < u64::from(sent) {
        return None;
    }
    Some(if sent == asked {
        format!("thinking.budget_tokens: must be less than max_tokens ({asked})")
    } else {
        format!(
            "thinking.budget_tokens: must be less than max_tokens, which pipeline \"{}\" lowers to its ceiling ({sent}); ask for a budget below {sent}",
            pipeline.name
        )
    })
}

/// Adds the `request-id` header Anthropic's SDKs read (`x-request-id` is
/// set for every route).
fn with_request_id(mut resp: Response<ResponseBody>, request_id: &str) -> Response<ResponseBody> {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("request-id", v);
    }
    resp
}

pub(super) async fn messages(
    shared: &Shared,
    req: Request<Incoming>,
    request_id: &str,
    caller: Option<Arc<ApiKey>>,
) -> Response<ResponseBody> {
    with_request_id(answer(shared, req, request_id, caller).await, request_id)
}

async fn answer(
    shared: &Shared,
    req: Request<Incoming>,
    request_id: &str,
    caller: Option<Arc<ApiKey>>,
) -> Response<ResponseBody> {
    let trace = shared.run.incoming_trace(req.headers());
    let (msg, pipeline) = match read(
        shared,
        req,
        request_id,
        Endpoint::Messages,
        caller.as_deref(),
    )
    .await
    {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let admission = run::spawn(
        &shared.run,
        pipeline,
        RunRequest {
            request_id: request_id.to_string(),
            messages: msg.messages,
            max_tokens: msg.max_tokens,
            params: msg.params,
            tools: msg.tools,
            caller,
            trace,
        },
    );
    let rx = match admission.await {
        Ok(Admission::Streaming(rx)) => rx,
        Ok(Admission::Rejected(r)) => {
            let mut resp =
                anthropic_error_of(status_of(r.code), r.upstream_kind, &r.message, request_id);
            super::set_retry_after(&mut resp, r.retry_after);
            super::set_rate_headers(
                &mut resp,
                r.rate_limit.as_ref(),
                true,
                shared.run.ledger.now_ms(),
            );
            return resp;
        }
        Err(_) => {
            return anthropic_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request ended unexpectedly",
                request_id,
            );
        }
    };
    let encoder = MessagesEncoder::new(format!("msg_{request_id}"), msg.model);
    if msg.stream {
        return super::event_stream(ResponseBody::Messages(EventBody::new(rx, encoder)));
    }
    collect(rx, encoder, request_id).await
}

/// `stream: false`: the stream's events, assembled into one `message`.
async fn collect(
    mut rx: EventReceiver,
    mut encoder: MessagesEncoder,
    request_id: &str,
) -> Response<ResponseBody> {
    let mut assembled = Assembled::default();
    let mut events = Vec::new();
    let mut failure = None;
    while let Some(ev) = rx.recv().await {
        if let Event::Error {
            code,
            message,
            kind,
        } = &ev
            && *code != ErrorCode::TokenCeiling
        {
            failure = Some((*code, message.clone(), *kind));
        }
        encoder.on(ev, &mut events);
        for (_, data) in events.drain(..) {
            assembled.apply(data);
        }
    }
    if let Some((code, message, kind)) = failure {
        return anthropic_error_of(status_of(code), kind, &message, request_id);
    }
    match assembled.message {
        Some(m) => json_response(StatusCode::OK, m),
        None => anthropic_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request ended unexpectedly",
            request_id,
        ),
    }
}

/// `POST /v1/messages/count_tokens`: Sluice's estimate (o200k) of what
/// the request would send, the pipeline's system prompt and tools included.
pub(super) async fn count_tokens(
    shared: &Shared,
    req: Request<Incoming>,
    request_id: &str,
    caller: Option<Arc<ApiKey>>,
) -> Response<ResponseBody> {
    let resp = match read(
        shared,
        req,
        request_id,
        Endpoint::CountTokens,
        caller.as_deref(),
    )
    .await
    {
        Err(resp) => resp,
        Ok((msg, pipeline)) => {
            let mut prompt = Vec::with_capacity(msg.messages.len() + 1);
            if let Some(system) = &pipeline.system {
                prompt.push(crate::provider::Message::new(
                    crate::provider::Role::System,
                    system.clone(),
                ));
            }
            prompt.extend(msg.messages);
            let tools: Vec<_> = pipeline
                .tool_specs
                .iter()
                .cloned()
                .chain(msg.tools)
                .collect();
            let n = tokens::count_request_off_worker(&prompt, &tools).await;
            json_response(StatusCode::OK, json!({ "input_tokens": n }))
        }
    };
    with_request_id(resp, request_id)
}
