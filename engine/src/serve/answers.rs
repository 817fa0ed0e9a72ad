//! Answers that are not event streams, and the headers failures carry:
//! JSON documents and errors, `405`s, the status of each error code, and
//! `Retry-After` and the `x-ratelimit-*` headers.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::json;

use super::ResponseBody;
use crate::run::{ErrorCode, Rejection};

/// The HTTP status of a failure known before the stream started (the one
/// place that maps Sluice's error codes to statuses).
pub(crate) fn rejection_status(code: ErrorCode) -> StatusCode {
    match code {
        c if c.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::UpstreamRateLimited | ErrorCode::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::BudgetExhausted | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        // Before any call, only a prompt larger than the request's token
        // budget hits the ceiling: the client's to fix.
        ErrorCode::TokenCeiling => StatusCode::BAD_REQUEST,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// The headers of a rate limit's refusal: OpenAI's `x-ratelimit-*` (which
/// the OpenAI SDKs read, with `retry-after-ms`) or, on the Messages API,
/// Anthropic's `anthropic-ratelimit-*`.
pub(crate) fn set_rate_headers(
    resp: &mut Response<ResponseBody>,
    refusal: Option<&crate::run::RateRefusal>,
    anthropic: bool,
    now_ms: i64,
) {
    let Some(r) = refusal else { return };
    let s = r.standing;
    let kind = r.kind;
    let mut pairs = Vec::with_capacity(4);
    if anthropic {
        let reset = crate::ledger::money::rfc3339(now_ms.saturating_add(s.reset_ms));
        pairs.push((
            format!("anthropic-ratelimit-{kind}-limit"),
            s.limit.to_string(),
        ));
        pairs.push((
            format!("anthropic-ratelimit-{kind}-remaining"),
            s.remaining.to_string(),
        ));
        pairs.push((format!("anthropic-ratelimit-{kind}-reset"), reset));
    } else {
        pairs.push((format!("x-ratelimit-limit-{kind}"), s.limit.to_string()));
        pairs.push((
            format!("x-ratelimit-remaining-{kind}"),
            s.remaining.to_string(),
        ));
        pairs.push((
            format!("x-ratelimit-reset-{kind}"),
            openai_duration(s.reset_ms),
        ));
    }
    if let Some(ms) = s.retry_after_ms {
        pairs.push(("retry-after-ms".to_string(), ms.max(0).to_string()));
    }
    for (name, value) in pairs {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            resp.headers_mut().insert(n, v);
        }
    }
}

/// A duration as OpenAI writes its reset headers: `250ms`, `1.5s`, `6m0s`.
fn openai_duration(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 if ms % 1000 == 0 => format!("{}s", ms / 1000),
        1_000..60_000 => format!("{:.3}s", ms as f64 / 1000.0)
            .trim_end_matches('0')
            .to_string(),
        _ => format!("{}m{}s", ms / 60_000, ms % 60_000 / 1000),
    }
}

/// Whole seconds, rounded up, as `Retry-After` wants them.
pub(crate) fn set_retry_after(resp: &mut Response<ResponseBody>, after: Option<Duration>) {
    if let Some(ra) = after {
        let secs = ra.as_secs() + u64::from(ra.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
}

pub(super) fn rejection_response(
    r: &Rejection,
    request_id: &str,
    now_ms: i64,
) -> Response<ResponseBody> {
    let mut body = json!({
        "error": {"code": r.code, "message": r.message, "request_id": request_id}
    });
    if let Some(s) = r.upstream_status {
        body["error"]["upstream_status"] = json!(s);
    }
    if let Some(serde_json::Value::Object(extra)) = &r.details {
        for (k, v) in extra {
            body["error"][k] = v.clone();
        }
    }
    let mut resp = json_response(rejection_status(r.code), body);
    set_retry_after(&mut resp, r.retry_after);
    set_rate_headers(&mut resp, r.rate_limit.as_ref(), false, now_ms);
    resp
}

pub(super) fn json_response(status: StatusCode, body: serde_json::Value) -> Response<ResponseBody> {
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = Response::new(ResponseBody::Full(Full::new(Bytes::from(bytes))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub(super) fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    field: Option<&str>,
    request_id: &str,
) -> Response<ResponseBody> {
    let mut err = json!({"code": code, "message": message, "request_id": request_id});
    if let Some(f) = field {
        err["field"] = json!(f);
    }
    json_response(status, json!({ "error": err }))
}

pub(super) fn method_not_allowed(allow: &'static str, request_id: &str) -> Response<ResponseBody> {
    let mut resp = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("method not allowed here; use {allow}"),
        None,
        request_id,
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}
