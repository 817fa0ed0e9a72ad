//! CORS over loopback, as a browser would exercise it: nothing is allowed
//! with no `server.cors`; a preflight is answered before authentication,
//! 204 with the policy for an allowed origin and 403 with no CORS header
//! otherwise; every answer to an allowed origin (event streams, 401, 400,
//! 429) carries the headers a page needs to read it; a refused origin gets
//! none and is logged; a reload changes the policy. (`browser.rs` runs the
//! same in a real browser.)

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use common::*;
use http::{HeaderMap, StatusCode};
use sluice::compile::{Catalog, compile_sources};
use sluice::serve::RunningServer;
use sluice_testkit::{MockProvider, Reply, Script};

const PAGE: &str = "http://page.test:8000";
const BODY: &str = r#"{"input": "hi"}"#;

/// Keys `page` (any pipeline) and `once` (one request a minute), and
/// `server.cors` as `cors` says (empty: none).
fn catalog(mock: &MockProvider, cors: &str, keys: &[&ApiKey]) -> Catalog {
    let server = if cors.is_empty() {
        String::new()
    } else {
        format!("server:\n  cors: {cors}\n")
    };
    let keys: String = keys.iter().map(|k| k.entry.as_str()).collect();
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: memory\n{server}providers:\n  mock: {{kind: openai, base_url: \"{}\"}}\nkeys:\n{keys}",
            mock.base_url()
        ),
    );
    let pipeline = (
        PathBuf::from("chat.yaml"),
        "name: chat\nmodel: {provider: mock, name: gpt-4o-mini}\nlimits: {max_tokens: 100}\ntimeouts: {first_token: 10s, idle: 10s, total: 30s}\n".to_string(),
    );
    compile_sources(&settings, &[pipeline]).unwrap_or_else(|d| panic!("{d:#?}"))
}

struct Setup {
    mock: MockProvider,
    server: RunningServer,
    page: ApiKey,
    once: ApiKey,
}

async fn start(cors: &str) -> Setup {
    logs::capture();
    let mock = MockProvider::start(Script::single(Reply::text(&["Hello", " page"])))
        .await
        .expect("mock starts");
    let page = api_key("page", ", pipelines: [\"*\"], metrics: true");
    let once = api_key(
        "once",
        ", pipelines: [\"*\"], rate_limit: {requests_per_minute: 1}",
    );
    let cat = catalog(&mock, cors, &[&page, &once]);
    let server = RunningServer::start(cat, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("server starts");
    Setup {
        mock,
        server,
        page,
        once,
    }
}

/// A preflight for a POST to a pipeline from `origin` asking for `headers`.
async fn preflight(
    addr: SocketAddr,
    origin: &str,
    method: &str,
    headers: &str,
) -> (StatusCode, HeaderMap) {
    let req = http::Request::builder()
        .method("OPTIONS")
        .uri("/v1/pipelines/chat")
        .header("host", "sluice.test")
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", headers)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = send(addr, req).await;
    (resp.status(), resp.headers().clone())
}

fn cors_headers(h: &HeaderMap) -> Vec<String> {
    h.keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_else(|| panic!("no {name} in {h:?}"))
}

#[tokio::test]
async fn nothing_is_allowed_without_server_cors_and_refusals_are_logged() {
    let s = start("").await;
    let addr = s.server.addr;
    let origin = "http://nothing-allowed.test:1";
    let (status, h) = preflight(addr, origin, "POST", "content-type").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(cors_headers(&h), Vec::<String>::new());
    assert!(h.get("vary").is_none(), "{h:?}");
    let auth = format!("Bearer {}", s.page.secret);
    let (status, h, _) = call_with(
        addr,
        "/v1/pipelines/chat",
        &[("origin", origin), ("authorization", &auth)],
        Some(BODY),
    )
    .await;
    // Served (a browser withholds it from the page), with no CORS header.
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cors_headers(&h), Vec::<String>::new());
    assert!(h.get("vary").is_none(), "{h:?}");
    let logged = logs::lines_with(origin);
    assert_eq!(logged.len(), 2, "{logged:#?}");
    assert!(
        logged[0].contains("WARN")
            && logged[0].contains("cross-origin preflight refused: server.cors is not set"),
        "{}",
        logged[0]
    );
    assert!(
        logged[1].contains("cross-origin request refused")
            && logged[1].contains("path=\"/v1/pipelines/chat\""),
        "{}",
        logged[1]
    );
    assert!(!logged.concat().contains(&s.page.secret));
}

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_is_answered_before_authentication() {
    let s = start(&format!("{{allowed_origins: [\"{PAGE}\"], max_age: 90s}}")).await;
    let (status, h) = preflight(s.server.addr, PAGE, "POST", "authorization, content-type").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(header(&h, "access-control-allow-origin"), PAGE);
    assert_eq!(header(&h, "access-control-allow-methods"), "GET, POST");
    assert_eq!(
        header(&h, "access-control-allow-headers"),
        "authorization, content-type, x-api-key, x-request-id"
    );
    assert_eq!(header(&h, "access-control-max-age"), "90");
    assert_eq!(
        header(&h, "vary"),
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    );
    assert!(h.get("access-control-allow-credentials").is_none());
    assert!(h.get("access-control-expose-headers").is_none());
    // It read no key, and nothing reached the provider.
    assert_eq!(s.mock.journal().request_count(), 0);
}

#[tokio::test]
async fn preflights_asking_for_what_is_not_allowed_are_refused_and_logged() {
    let s = start(&format!(
        "{{allowed_origins: [\"{PAGE}\", \"https://*.refusals.test\"], allowed_headers: [content-type]}}"
    ))
    .await;
    let addr = s.server.addr;
    for (origin, method, headers, why) in [
        (
            "http://other.refusals.test",
            "POST",
            "content-type",
            "the origin is not in server.cors.allowed_origins",
        ),
        (
            "https://refusals.test",
            "POST",
            "content-type",
            "the origin is not in server.cors.allowed_origins",
        ),
        (
            "https://put.refusals.test",
            "PUT",
            "content-type",
            "method \"PUT\" is not in server.cors.allowed_methods",
        ),
        (
            "https://auth.refusals.test",
            "POST",
            "content-type, Authorization",
            "header \"Authorization\" is not in server.cors.allowed_headers",
        ),
    ] {
        let (status, h) = preflight(addr, origin, method, headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{origin}");
        assert_eq!(cors_headers(&h), Vec::<String>::new(), "{origin}");
        assert_eq!(
            header(&h, "vary"),
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        );
        let logged = logs::lines_with(&format!("origin=\"{origin}\""));
        assert_eq!(logged.len(), 1, "{logged:#?}");
        assert!(logged[0].contains(why), "{}", logged[0]);
    }
    // A subdomain the wildcard covers, asking for what is allowed.
    let (status, h) = preflight(addr, "https://app.refusals.test", "POST", "Content-Type").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        header(&h, "access-control-allow-origin"),
        "https://app.refusals.test"
    );
    assert_eq!(header(&h, "access-control-allow-headers"), "content-type");
}

#[tokio::test]
async fn answers_to_an_allowed_origin_carry_the_headers_on_streams_and_errors() {
    let s = start(&format!(
        "{{allowed_origins: [\"{PAGE}\"], exposed_headers: [X-Request-Id, retry-after, x-sluice-config]}}"
    ))
    .await;
    let addr = s.server.addr;
    let page = format!("Bearer {}", s.page.secret);
    let once = format!("Bearer {}", s.once.secret);
    let path = "/v1/pipelines/chat";
    let check = |what: &str, h: &HeaderMap| {
        assert_eq!(header(h, "access-control-allow-origin"), PAGE, "{what}");
        assert_eq!(
            header(h, "access-control-expose-headers"),
            "x-request-id, retry-after, x-sluice-config",
            "{what}"
        );
        assert_eq!(header(h, "vary"), "Origin", "{what}");
        assert!(
            h.get("access-control-allow-credentials").is_none(),
            "{what}"
        );
    };
    // The event stream.
    let resp = send(
        addr,
        request_with(
            path,
            &[("origin", PAGE), ("authorization", &page)],
            Some(BODY),
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(resp.headers(), "content-type"), "text/event-stream");
    check("stream", &resp.headers().clone());
    let events = SseReader::new(resp).collect().await;
    assert_eq!(text(&events), "Hello page");
    // 401: no key.
    let (status, h, _) = call_with(addr, path, &[("origin", PAGE)], Some(BODY)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    check("401", &h);
    // 400: a body Sluice cannot take.
    let (status, h, _) = call_with(
        addr,
        path,
        &[("origin", PAGE), ("authorization", &page)],
        Some("{"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    check("400", &h);
    // 429: past the key's rate limit, with the header that says when.
    let (status, _, _) = call_with(
        addr,
        path,
        &[("origin", PAGE), ("authorization", &once)],
        Some(BODY),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, h, _) = call_with(
        addr,
        path,
        &[("origin", PAGE), ("authorization", &once)],
        Some(BODY),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    check("429", &h);
    assert!(h.contains_key("retry-after"));
    // The same request from another origin: served, no CORS header, but
    // `Vary: Origin`, since the answer depends on it.
    let stranger = "http://stranger.answers.test";
    let (status, h, _) = call_with(
        addr,
        path,
        &[("origin", stranger), ("authorization", &page)],
        Some(BODY),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cors_headers(&h), Vec::<String>::new());
    assert_eq!(header(&h, "vary"), "Origin");
    assert_eq!(logs::lines_with(stranger).len(), 1);
    // No `Origin`: not a cross-origin request; nothing logged.
    let (status, h, _) = call_with(addr, "/v1/pipelines", &[("authorization", &page)], None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cors_headers(&h), Vec::<String>::new());
}

#[tokio::test]
async fn credentials_and_any_origin() {
    let s = start(&format!(
        "{{allowed_origins: [\"{PAGE}\"], allow_credentials: true}}"
    ))
    .await;
    let (status, h) = preflight(s.server.addr, PAGE, "POST", "content-type").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(header(&h, "access-control-allow-credentials"), "true");
    let (_, h, _) = call_with(s.server.addr, "/healthz", &[("origin", PAGE)], None).await;
    assert_eq!(header(&h, "access-control-allow-credentials"), "true");
    assert_eq!(header(&h, "access-control-allow-origin"), PAGE);

    let s = start("{allowed_origins: [\"*\"], allowed_headers: [\"*\"]}").await;
    let anyone = "https://anyone.any.test";
    let (status, h) = preflight(
        s.server.addr,
        anyone,
        "POST",
        "x-stainless-os, content-type",
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(header(&h, "access-control-allow-origin"), anyone);
    assert_eq!(
        header(&h, "access-control-allow-headers"),
        "x-stainless-os, content-type"
    );
    assert!(h.get("access-control-allow-credentials").is_none());
}

#[tokio::test]
async fn a_reload_changes_which_origins_are_allowed() {
    let s = start(&format!("{{allowed_origins: [\"{PAGE}\"]}}")).await;
    let addr = s.server.addr;
    let later = "https://later.reload.test";
    let allowed = |h: &HeaderMap| {
        h.get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (_, h, _) = call_with(addr, "/healthz", &[("origin", later)], None).await;
    assert_eq!(allowed(&h), None);

    let reload = s.server.reload_handle();
    let v = reload.apply(Ok(catalog(
        &s.mock,
        &format!("{{allowed_origins: [\"{later}\"]}}"),
        &[&s.page],
    )));
    assert_eq!(v, 2);
    let (_, h, _) = call_with(addr, "/healthz", &[("origin", later)], None).await;
    assert_eq!(allowed(&h).as_deref(), Some(later));
    let (_, h, _) = call_with(addr, "/healthz", &[("origin", PAGE)], None).await;
    assert_eq!(allowed(&h), None);
    // Applied, not reported as waiting for a restart.
    let auth = format!("Bearer {}", s.page.secret);
    let (_, _, config) = call_with(addr, "/v1/config", &[("authorization", &auth)], None).await;
    assert_eq!(
        config["last_reload"]["restart_needed"],
        serde_json::json!([]),
        "{config}"
    );

    reload.apply(Ok(catalog(&s.mock, "", &[&s.page])));
    let (status, h) = preflight(addr, later, "POST", "content-type").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(cors_headers(&h), Vec::<String>::new());
}
