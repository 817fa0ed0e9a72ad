//! Authentication of a request, before anything else reads it: the key
//! it presents, and the answers (401, 403) in the shape of the API called.
//!
//! The rule for each route:
//! - `/healthz`: always open.
//! - `/metrics`: with keys declared, a key with `metrics: true`.
//! - every `/v1/...` route: with keys declared, any key; a pipeline (by
//!   path or by `model`) only with a key that may call it, and a key that
//!   may not is answered 403 whether the pipeline exists or not; the lists
//!   (`/v1/pipelines`, `/v1/models`) show the pipelines the key may call.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use serde_json::json;

use super::{ResponseBody, json_response};
use crate::auth::ApiKey;
use crate::metrics::AuthLabels;

/// The API whose error shape an answer takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// `/v1/pipelines`, `/metrics`: Sluice's own `{"error": {"code"...}}`.
    Native,
    /// `/v1/chat/completions`, `/v1/models`.
    OpenAi,
    /// `/v1/messages`, `/v1/messages/count_tokens`.
    Anthropic,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No key presented (401).
    Missing,
    /// A key no one declared (401).
    Unknown,
    /// A declared key that may not do this (403).
    Forbidden,
}

impl Denied {
    fn reason(self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Unknown => "unknown",
            Denied::Forbidden => "forbidden",
        }
    }
}

/// The credential a request presents: `Authorization: Bearer` (the
/// OpenAI SDKs), else `x-api-key` (the Anthropic SDK).
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim());
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok())
}

/// The caller's key: `Ok(None)` when no key is declared (every caller is
/// welcome); why not otherwise ([`refuse`] answers it).
pub(crate) fn authenticate(
    auth: &crate::auth::Auth,
    headers: &HeaderMap,
) -> Result<Option<Arc<ApiKey>>, Denied> {
    if !auth.required() {
        return Ok(None);
    }
    let secret = presented(headers).ok_or(Denied::Missing)?;
    auth.identify(secret).map(Some).ok_or(Denied::Unknown)
}

/// Whether `caller` may call the pipeline named `name`. Asked before the
/// pipeline is looked up, so that the answer is the same whether it
/// exists or not.
pub(crate) fn may_call(caller: Option<&ApiKey>, name: &str) -> Result<(), Denied> {
    match caller {
        Some(key) if !key.may_call(name) => Err(Denied::Forbidden),
        _ => Ok(()),
    }
}

/// Whether `caller` may see the pipeline named `name` in a list.
pub(crate) fn lists(caller: Option<&ApiKey>, name: &str) -> bool {
    caller.is_none_or(|k| k.may_call(name))
}

/// The refusal, counted. Its message never repeats what was presented.
pub(crate) fn refuse(
    shared: &super::Shared,
    denied: Denied,
    api: Api,
    request_id: &str,
) -> Response<ResponseBody> {
    shared
        .run
        .metrics
        .auth_refusals
        .get_or_create(&AuthLabels {
            reason: denied.reason(),
        })
        .inc();
    let (status, message) = match denied {
        Denied::Missing => (
            StatusCode::UNAUTHORIZED,
            "no API key: send one as `Authorization: Bearer <key>` or `x-api-key: <key>`",
        ),
        Denied::Unknown => (StatusCode::UNAUTHORIZED, "the API key is not valid"),
        Denied::Forbidden => (
            StatusCode::FORBIDDEN,
            "this API key may not call this pipeline",
        ),
    };
    let body = match api {
        Api::Native => json!({"error": {
            "code": if status == StatusCode::UNAUTHORIZED { "unauthorized" } else { "forbidden" },
            "message": message,
            "request_id": request_id,
        }}),
        Api::OpenAi => json!({"error": {
            "message": message,
            "type": "invalid_request_error",
            "param": null,
            "code": match denied {
                Denied::Missing | Denied::Unknown => "invalid_api_key",
                Denied::Forbidden => "permission_denied",
            },
        }}),
        Api::Anthropic => json!({
            "type": "error",
            "error": {
                "type": if status == StatusCode::UNAUTHORIZED { "authentication_error" } else { "permission_error" },
                "message": message,
            },
            "request_id": request_id,
        }),
    };
    let mut resp = json_response(status, body);
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"sluice\""),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn keys_come_as_bearer_tokens_or_x_api_key() {
        assert_eq!(
            presented(&headers(&[("authorization", "Bearer sk-1")])),
            Some("sk-1")
        );
        assert_eq!(
            presented(&headers(&[("authorization", "bearer  sk-1 ")])),
            Some("sk-1")
        );
        assert_eq!(presented(&headers(&[("x-api-key", "sk-2")])), Some("sk-2"));
        // Authorization wins, and a scheme other than Bearer is no key.
        assert_eq!(
            presented(&headers(&[
                ("authorization", "Basic abc"),
                ("x-api-key", "sk-2")
            ])),
            None
        );
        assert_eq!(presented(&headers(&[])), None);
    }
}
