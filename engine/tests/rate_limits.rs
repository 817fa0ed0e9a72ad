//! Rate limits, black-box: requests per minute admit exactly the limit of a
//! burst, tokens per minute reserve the worst case and give back what was
//! not used, a pipeline's limit holds across keys, and each API's 429
//! carries the headers its SDKs read. The ledger's clock is fixed, so no
//! bucket drains while a test runs unless the test moves the clock.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use http::{HeaderMap, StatusCode};
use sluice::compile::{Catalog, compile_sources};
use sluice::provider::{Message, Role};
use sluice::serve::RunningServer;
use sluice_testkit::{MockProvider, Reply, Script};

/// 2027-01-30T12:00:00Z.
const NOON: i64 = 1_801_310_400_000;

/// A key that may call every pipeline, with `rest` in its entry.
fn key(name: &str, rest: &str) -> ApiKey {
    api_key(name, &format!(", pipelines: [\"*\"]{rest}"))
}

/// One pipeline `chat` on the mock (max_tokens 100), with `pipeline_rest`
/// appended to it and `extra` to the settings.
fn catalog(mock: &MockProvider, storage: &str, extra: &str, pipeline_rest: &str) -> Catalog {
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: \"{storage}\"\nserver: {{shutdown_grace: 2s}}\nproviders:\n  mock: {{kind: openai, base_url: \"{}\"}}\n{extra}",
            mock.base_url()
        ),
    );
    let pipeline = (
        PathBuf::from("chat.yaml"),
        format!(
            "name: chat\nmodel: {{provider: mock, name: gpt-4o-mini}}\nlimits: {{max_tokens: 100}}\ntimeouts: {{first_token: 5s, total: 30s}}\n{pipeline_rest}"
        ),
    );
    compile_sources(&settings, &[pipeline]).unwrap_or_else(|d| panic!("{d:#?}"))
}

async fn start(catalog: Catalog) -> RunningServer {
    let server = RunningServer::start(catalog, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("server starts");
    server.ledger().set_clock(Some(NOON));
    server
}

async fn call(
    addr: SocketAddr,
    path: &str,
    secret: &str,
    body: &str,
) -> (StatusCode, HeaderMap, serde_json::Value) {
    let bearer = format!("Bearer {secret}");
    call_with(addr, path, &[("authorization", &bearer)], Some(body)).await
}

const NATIVE: &str = r#"{"input":"hi","stream":false}"#;

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} in {h:?}"))
        .to_str()
        .unwrap()
}

/// Three hundred requests at once on a key allowed fifty a minute: exactly
/// fifty reach the provider; the rest are 429s that say when to come back.
/// A second later (on the ledger's clock) the bucket has room for 0.83 of
/// a request, so none; 1.2 s later, exactly one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_admit_exactly_the_limit_of_a_burst() {
    let mock = MockProvider::start(Script::single(Reply::text(&["ok"])))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "sluice-rate-{}-{}",
        std::process::id(),
        sluice::ledger::money::now_ms()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/ledger.db", dir.display());
    let k = key("burst", ", rate_limit: {requests_per_minute: 50}");
    let server = start(catalog(&mock, &url, &format!("keys:\n{}", k.entry), "")).await;
    let addr = server.addr;
    let mut tasks = Vec::new();
    for _ in 0..300 {
        let secret = k.secret.clone();
        tasks.push(tokio::spawn(async move {
            call(addr, "/v1/pipelines/chat", &secret, NATIVE).await
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let (status, h, body) = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                assert_eq!(body["error"]["code"], "rate_limited", "{body}");
                assert_eq!(body["error"]["rate_limit"]["scope"], "key:burst");
                assert_eq!(header(&h, "x-ratelimit-limit-requests"), "50");
                assert_eq!(header(&h, "x-ratelimit-remaining-requests"), "0");
                assert_eq!(header(&h, "x-ratelimit-reset-requests"), "1m0s");
                assert_eq!(header(&h, "retry-after-ms"), "1200");
                assert_eq!(header(&h, "retry-after"), "2");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((ok, limited), (50, 250));
    assert_eq!(mock.journal().request_count(), 50);
    let ledger = server.ledger();
    ledger.set_clock(Some(NOON + 1_000));
    assert_eq!(
        call(addr, "/v1/pipelines/chat", &k.secret, NATIVE).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    ledger.set_clock(Some(NOON + 1_200));
    assert_eq!(
        call(addr, "/v1/pipelines/chat", &k.secret, NATIVE).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(addr, "/v1/pipelines/chat", &k.secret, NATIVE).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    let rows = ledger.rows_since(0).await.unwrap();
    assert_eq!(
        rows.iter().filter(|r| r.status == "rate_limited").count(),
        252
    );
    assert!(rows.iter().all(|r| r.api_key.as_deref() == Some("burst")));
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// What one request takes from a bucket of tokens: its prompt (with the
/// margin for the provider's count) and max_tokens.
fn worst_tokens() -> i64 {
    let prompt = [Message::new(Role::User, "hi")];
    (sluice::tokens::prompt_bound(sluice::tokens::count_prompt(&prompt)) + 100) as i64
}

/// Tokens per minute take the worst case and settle to what was used (10
/// prompt + 100 completion tokens, as the mock reports): with room for one
/// worst case and 200 more, two requests in a row fit only because the
/// first gave back what it did not use, and a third does not.
#[tokio::test]
async fn tokens_per_minute_reserve_the_worst_case_and_settle_to_the_use() {
    let mock = MockProvider::start(Script::single(Reply::text(&[" word"; 100])))
        .await
        .unwrap();
    let w = worst_tokens();
    let limit = w + 200;
    let k = key(
        "t",
        &format!(", rate_limit: {{tokens_per_minute: {limit}}}"),
    );
    let server = start(catalog(&mock, "memory", &format!("keys:\n{}", k.entry), "")).await;
    let addr = server.addr;
    for _ in 0..2 {
        let (status, _, body) = call(addr, "/v1/pipelines/chat", &k.secret, NATIVE).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, h, body) = call(
        addr,
        "/v1/chat/completions",
        &k.secret,
        r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(header(&h, "x-ratelimit-limit-tokens"), limit.to_string());
    // 220 tokens used of the bucket, nothing drained (the clock is fixed).
    assert_eq!(
        header(&h, "x-ratelimit-remaining-tokens"),
        (limit - 220).to_string()
    );
    // It fits once 20 tokens have drained: 20 × 60,000 / limit ms.
    let wait = (20 * 60_000 + limit - 1) / limit;
    assert_eq!(header(&h, "retry-after-ms"), wait.to_string());
    assert_eq!(mock.journal().request_count(), 2);
    // A request larger than the whole limit never fits, and says so.
    let small = key("small", ", rate_limit: {tokens_per_minute: 50}");
    server.stop().await;
    let server = start(catalog(
        &mock,
        "memory",
        &format!("keys:\n{}", small.entry),
        "",
    ))
    .await;
    let (status, h, body) = call(server.addr, "/v1/pipelines/chat", &small.secret, NATIVE).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(h.get("retry-after").is_none(), "{h:?}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("never"),
        "{body}"
    );
    server.stop().await;
}

/// A pipeline's limit counts every caller; the Messages API's 429 carries
/// Anthropic's headers.
#[tokio::test]
async fn a_pipelines_limit_counts_every_key_and_messages_get_anthropics_headers() {
    let mock = MockProvider::start(Script::single(Reply::text(&["ok"])))
        .await
        .unwrap();
    let a = key("a", "");
    let b = key("b", "");
    let server = start(catalog(
        &mock,
        "memory",
        &format!("keys:\n{}{}", a.entry, b.entry),
        "rate_limit: {requests_per_minute: 2}\n",
    ))
    .await;
    let addr = server.addr;
    assert_eq!(
        call(addr, "/v1/pipelines/chat", &a.secret, NATIVE).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(addr, "/v1/pipelines/chat", &b.secret, NATIVE).await.0,
        StatusCode::OK
    );
    let (status, h, body) = call(
        addr,
        "/v1/messages",
        &a.secret,
        r#"{"model":"chat","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(header(&h, "anthropic-ratelimit-requests-limit"), "2");
    assert_eq!(header(&h, "anthropic-ratelimit-requests-remaining"), "0");
    // Full again a minute after noon; another request fits in 30 s.
    assert_eq!(
        header(&h, "anthropic-ratelimit-requests-reset"),
        "2027-01-30T12:01:00Z"
    );
    assert_eq!(header(&h, "retry-after"), "30");
    assert!(h.get("x-ratelimit-limit-requests").is_none());
    assert_eq!(mock.journal().request_count(), 2);
    server.stop().await;
}

/// The official Python SDKs against keys and a limit of one request a
/// minute: a wrong key raises `AuthenticationError`, the request past the
/// limit `RateLimitError`, with the `Retry-After` and limit headers each
/// SDK reads. Runs when SLUICE_TEST_OPENAI_PYTHON names a python with
/// `openai` and `anthropic` installed (CI sets it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdks_raise_their_own_errors_for_keys_and_limits() {
    let Some(python) = common::sdk::env_or_skip(
        "SLUICE_TEST_OPENAI_PYTHON",
        "keys and rate limits through the Python SDKs",
        "a python with `openai` and `anthropic` installed",
    ) else {
        return;
    };
    let mock = MockProvider::start(Script::single(Reply::text(&["ok"])))
        .await
        .unwrap();
    let o = key("o", ", rate_limit: {requests_per_minute: 1}");
    let a = key("a", ", rate_limit: {requests_per_minute: 1}");
    let server = start(catalog(
        &mock,
        "memory",
        &format!("keys:\n{}{}", o.entry, a.entry),
        "",
    ))
    .await;
    let base = format!("http://{}", server.addr);
    let r = common::sdk::run_json(
        &python,
        &[
            &common::sdk::sdk_script("keys_and_limits.py"),
            &base,
            &o.secret,
            &a.secret,
        ],
    )
    .await;
    assert_eq!(
        r["openai_wrong_key"]["raised"], "AuthenticationError",
        "{r}"
    );
    assert_eq!(
        r["anthropic_wrong_key"]["raised"], "AuthenticationError",
        "{r}"
    );
    for first in ["openai_first", "anthropic_first"] {
        assert!(r[first]["raised"].is_null(), "{first}: {r}");
    }
    for second in ["openai_second", "anthropic_second"] {
        let e = &r[second];
        assert_eq!(e["raised"], "RateLimitError", "{second}: {r}");
        assert_eq!(e["status"], 429);
        assert_eq!(e["retry_after"], "60", "{second}: {r}");
        assert_eq!(e["retry_after_ms"], "60000");
        assert_eq!(e["limit"], "1");
        assert_eq!(e["remaining"], "0");
    }
    assert!(!r.to_string().contains(&o.secret) && !r.to_string().contains(&a.secret));
    assert_eq!(mock.journal().request_count(), 2);
    server.stop().await;
}
