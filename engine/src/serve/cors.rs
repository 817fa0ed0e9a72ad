//! CORS: the headers that let a web page of another origin read Sluice's
//! answers, and the answer to a browser's preflight.
//!
//! Runs in [`super::handle`] before anything else, authentication
//! included: a preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) carries no credential, so it is
//! answered here, 204 with the policy for an allowed origin, 403 without
//! any CORS header otherwise. Every other answer (errors, 401s, 429s and
//! event streams alike) gets the CORS headers when its origin is allowed,
//! so that a page can read why it was refused. A request from an origin
//! that is not allowed is still served (a browser, not the server,
//! withholds the answer from the page; Sluice's routes take JSON, which a
//! browser sends cross-origin only after a preflight), logged, and gets
//! no CORS header. With no `server.cors`, no origin is allowed.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use tracing::warn;

use super::{ResponseBody, error_response};
use crate::compile::cors::{AllowedHeaders, Cors};

/// Longest origin or path quoted in a log line.
const LOG_CLIP: usize = 256;

/// What a request's `Origin` makes of it.
pub(super) enum Cross {
    /// No `Origin` header: nothing for CORS to do.
    None,
    /// An origin the policy allows, as the request sent it.
    Allowed(HeaderValue),
    /// Not allowed (already logged): no CORS header.
    Refused,
}

/// Whether `headers` and `method` make a CORS preflight.
pub(super) fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Judges a request's origin (and, for a preflight, the method and
/// headers it asks for), logging a refusal.
pub(super) fn check(
    cors: Option<&Cors>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Cross {
    let Some(value) = headers.get(header::ORIGIN) else {
        return Cross::None;
    };
    let origin = value.to_str().unwrap_or("");
    let preflight = is_preflight(method, headers);
    let refusal = match cors {
        None => Some("server.cors is not set".to_string()),
        Some(_) if value.to_str().is_err() => Some("the origin is not ASCII".to_string()),
        Some(c) if !c.allows_origin(origin) => {
            Some("the origin is not in server.cors.allowed_origins".to_string())
        }
        Some(c) if preflight => asked_for(c, headers),
        Some(_) => None,
    };
    match refusal {
        None => Cross::Allowed(value.clone()),
        Some(why) => {
            let kind = if preflight { "preflight" } else { "request" };
            warn!(
                origin = ?clip(origin),
                method = %method,
                path = ?clip(path),
                "cross-origin {kind} refused: {why}; no CORS headers sent"
            );
            Cross::Refused
        }
    }
}

/// What a preflight asks for that the policy does not allow, if anything.
fn asked_for(cors: &Cors, headers: &HeaderMap) -> Option<String> {
    let method = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !cors.allows_method(method) {
        return Some(format!(
            "method {:?} is not in server.cors.allowed_methods",
            clip(method)
        ));
    }
    for value in headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        let Ok(list) = value.to_str() else {
            return Some("access-control-request-headers is not ASCII".into());
        };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !cors.allows_header(name) {
                return Some(format!(
                    "header {:?} is not in server.cors.allowed_headers",
                    clip(name)
                ));
            }
        }
    }
    None
}

/// The answer to a preflight: 204 with the policy, or 403 with no CORS
/// header (`decorate` adds the rest).
pub(super) fn preflight(
    cors: Option<&Cors>,
    cross: &Cross,
    headers: &HeaderMap,
    request_id: &str,
) -> Response<ResponseBody> {
    let (Some(cors), Cross::Allowed(_)) = (cors, cross) else {
        return error_response(
            StatusCode::FORBIDDEN,
            "cors_refused",
            "this origin may not call Sluice from a browser (server.cors)",
            None,
            request_id,
        );
    };
    let mut resp = Response::new(ResponseBody::Full(Full::new(Bytes::new())));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    put(
        h,
        header::ACCESS_CONTROL_ALLOW_METHODS,
        &cors.methods.join(", "),
    );
    let allowed = match &cors.headers {
        // What was asked for, each checked above.
        AllowedHeaders::Any => headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", "),
        AllowedHeaders::List(list) => list.join(", "),
    };
    if !allowed.is_empty() {
        put(h, header::ACCESS_CONTROL_ALLOW_HEADERS, &allowed);
    }
    put(
        h,
        header::ACCESS_CONTROL_MAX_AGE,
        &cors.max_age.as_secs().to_string(),
    );
    resp
}

/// Adds the CORS headers of `cross` to any answer.
pub(super) fn decorate(cors: Option<&Cors>, cross: &Cross, preflight: bool, h: &mut HeaderMap) {
    let Some(cors) = cors else { return };
    // The answer depends on the origin (and a preflight's on what it
    // asked): caches must keep one per value.
    let vary = if preflight {
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    } else {
        "Origin"
    };
    h.append(header::VARY, HeaderValue::from_static(vary));
    let Cross::Allowed(origin) = cross else {
        return;
    };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if cors.credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !preflight && !cors.exposed.is_empty() {
        put(
            h,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            &cors.exposed.join(", "),
        );
    }
}

/// Names and values come from the compiled policy, so they are valid.
fn put(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// At most [`LOG_CLIP`] bytes of `s` (ASCII: header values and paths).
fn clip(s: &str) -> &str {
    let mut end = s.len().min(LOG_CLIP);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
