//! The console's page (`/console`): HTML, CSS and JavaScript embedded in
//! the binary, no build step, no library, nothing fetched from elsewhere.
//! The page holds no data: it reads the JSON endpoints of `console_api.rs`
//! with the admin key it asks for, so it is served without a key; sent
//! with one, the key must be an admin's (another key gets a 403).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;

use super::{ResponseBody, Shared, auth, error_response, method_not_allowed};

const INDEX: &str = include_str!("console/index.html");
const CSS: &str = include_str!("console/app.css");
const JS: &str = include_str!("console/app.js");

/// Whether `path` is one of the console's files.
pub(super) fn serves(path: &str) -> bool {
    matches!(
        path,
        "/console" | "/console/" | "/console/app.css" | "/console/app.js"
    )
}

fn has_credential(headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION) || headers.contains_key("x-api-key")
}

pub(super) fn answer(
    shared: &Shared,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    request_id: &str,
) -> Response<ResponseBody> {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return method_not_allowed("GET", request_id);
    }
    if has_credential(headers) {
        match auth::authenticate(&shared.auth, headers) {
            Err(denied) => return auth::refuse(shared, denied, auth::Api::Native, request_id),
            Ok(Some(k)) if !k.admin => {
                return auth::refuse(
                    shared,
                    auth::Denied::Forbidden,
                    auth::Api::Native,
                    request_id,
                );
            }
            Ok(_) => {}
        }
    }
    let (body, kind) = match path {
        "/console/app.css" => (CSS, "text/css; charset=utf-8"),
        "/console/app.js" => (JS, "text/javascript; charset=utf-8"),
        "/console" | "/console/" => (INDEX, "text/html; charset=utf-8"),
        _ => {
            return error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no route for {path}"),
                None,
                request_id,
            );
        }
    };
    let mut resp = Response::new(ResponseBody::Full(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}
