//! API keys, black-box: 401 and 403 in the shape of each API, that refused
//! requests reach no provider and cannot tell whether a pipeline exists,
//! lists and metrics by key, attribution in the ledger, loopback-only
//! without keys, and key and team budgets (daily under concurrency,
//! monthly across a month boundary on the ledger's clock).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use sluice::auth;
use sluice::compile::{Catalog, compile_sources};
use sluice::ledger::report::{self, GroupBy};
use sluice::ledger::{Ledger, money};
use sluice::serve::{RunningServer, Server};
use sluice_testkit::{MockProvider, Reply, Script};

use common::{ApiKey as Key, api_key as key};

/// Two pipelines, `chat` and `other`, on the mock; `extra` is appended to
/// the settings (keys, teams, prices).
fn catalog(mock: &MockProvider, storage: &str, extra: &str) -> Catalog {
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: \"{storage}\"\nserver: {{shutdown_grace: 2s}}\nproviders:\n  mock: {{kind: openai, base_url: \"{}\"}}\nprices:\n  gpt-4o-mini: {{input: 1.0, output: 2.0}}\n{extra}",
            mock.base_url()
        ),
    );
    let pipeline = |name: &str| {
        (
            PathBuf::from(format!("{name}.yaml")),
            format!(
                "name: {name}\nmodel: {{provider: mock, name: gpt-4o-mini}}\nlimits: {{max_tokens: 100}}\ntimeouts: {{first_token: 5s, total: 30s}}\n"
            ),
        )
    };
    compile_sources(&settings, &[pipeline("chat"), pipeline("other")])
        .unwrap_or_else(|d| panic!("{d:#?}"))
}

async fn start(catalog: Catalog) -> RunningServer {
    RunningServer::start(catalog, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("server starts")
}

/// A body for each API, naming `model`.
fn bodies(model: &str) -> [(&'static str, String); 3] {
    [
        (
            "/v1/pipelines/",
            r#"{"input":"hi","stream":false}"#.to_string(),
        ),
        (
            "/v1/chat/completions",
            format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#),
        ),
        (
            "/v1/messages",
            format!(
                r#"{{"model":"{model}","max_tokens":50,"messages":[{{"role":"user","content":"hi"}}]}}"#
            ),
        ),
    ]
}

fn path_for(route: &str, model: &str) -> String {
    if route.ends_with('/') {
        format!("{route}{model}")
    } else {
        route.to_string()
    }
}

/// The body with its request id taken out (each answer has its own).
fn without_id(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("request_id");
    }
    if let Some(e) = v.get_mut("error").and_then(|e| e.as_object_mut()) {
        e.remove("request_id");
    }
    v
}

#[tokio::test]
async fn refusals_come_in_the_shape_of_the_api_called_and_reach_no_provider() {
    let mock = MockProvider::start(Script::single(Reply::text(&["ok"])))
        .await
        .unwrap();
    let only_chat = key("only-chat", ", pipelines: [chat], team: search");
    let everything = key("everything", ", pipelines: [\"*\"]");
    let extra = format!(
        "teams:\n  search: {{}}\nkeys:\n{}{}",
        only_chat.entry, everything.entry
    );
    let server = start(catalog(&mock, "memory", &extra)).await;
    let addr = server.addr;
    let wrong = auth::new_secret().unwrap();
    let bearer = |s: &str| format!("Bearer {s}");
    for (route, body) in bodies("chat") {
        let path = path_for(route, "chat");
        // No key, then a key nobody declared (each way of sending one).
        for headers in [
            vec![],
            vec![("authorization", bearer(&wrong))],
            vec![("x-api-key", wrong.clone())],
            vec![("authorization", "Basic dXNlcjpwYXNz".to_string())],
        ] {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (status, head, json) = call_with(addr, &path, &h, Some(&body)).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{path} {headers:?}: {json}"
            );
            assert!(head.get("www-authenticate").is_some());
            match route {
                "/v1/chat/completions" => {
                    assert_eq!(json["error"]["type"], "invalid_request_error");
                    assert_eq!(json["error"]["code"], "invalid_api_key");
                }
                "/v1/messages" => {
                    assert_eq!(json["type"], "error");
                    assert_eq!(json["error"]["type"], "authentication_error");
                }
                _ => assert_eq!(json["error"]["code"], "unauthorized"),
            }
            let text = json.to_string();
            assert!(!text.contains(&wrong), "the secret was repeated: {text}");
        }
    }
    assert_eq!(mock.journal().request_count(), 0);
    // Liveness stays open; the lists need a key.
    assert_eq!(
        call_with(addr, "/healthz", &[], None).await.0,
        StatusCode::OK
    );
    for path in ["/v1/pipelines", "/v1/models", "/metrics", "/nowhere"] {
        assert_eq!(
            call_with(addr, path, &[], None).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    // A declared key gets through, either way of sending it.
    let (status, _, json) = call_with(
        addr,
        "/v1/pipelines/chat",
        &[("x-api-key", &only_chat.secret)],
        Some(r#"{"input":"hi","stream":false}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(mock.journal().request_count(), 1);
    let text = server.ledger().rows_since(0).await.unwrap();
    assert_eq!(text.len(), 1, "refused requests are not rows");
    server.stop().await;
}

#[tokio::test]
async fn a_key_that_may_not_call_a_pipeline_cannot_tell_whether_it_exists() {
    let mock = MockProvider::start(Script::single(Reply::text(&["ok"])))
        .await
        .unwrap();
    let only_chat = key("only-chat", ", pipelines: [chat]");
    let everything = key("everything", ", pipelines: [\"*\"]");
    let extra = format!("keys:\n{}{}", only_chat.entry, everything.entry);
    let server = start(catalog(&mock, "memory", &extra)).await;
    let addr = server.addr;
    let auth_header = format!("Bearer {}", only_chat.secret);
    for ((route, exists), (_, missing)) in bodies("other").into_iter().zip(bodies("no-such")) {
        let h = [("authorization", auth_header.as_str())];
        let a = call_with(addr, &path_for(route, "other"), &h, Some(&exists)).await;
        let b = call_with(addr, &path_for(route, "no-such"), &h, Some(&missing)).await;
        assert_eq!(a.0, StatusCode::FORBIDDEN, "{route}: {}", a.2);
        assert_eq!(b.0, StatusCode::FORBIDDEN, "{route}: {}", b.2);
        assert_eq!(without_id(a.2.clone()), without_id(b.2), "{route}");
        match route {
            "/v1/chat/completions" => assert_eq!(a.2["error"]["code"], "permission_denied"),
            "/v1/messages" => assert_eq!(a.2["error"]["type"], "permission_error"),
            _ => assert_eq!(a.2["error"]["code"], "forbidden"),
        }
        // A key that may call anything learns what anyone with access could.
        let h = [("x-api-key", everything.secret.as_str())];
        let c = call_with(addr, &path_for(route, "no-such"), &h, Some(&missing)).await;
        assert_eq!(c.0, StatusCode::NOT_FOUND, "{route}: {}", c.2);
    }
    assert_eq!(mock.journal().request_count(), 0);
    // The lists show what the key may call.
    let h = [("authorization", auth_header.as_str())];
    let (_, _, models) = call_with(addr, "/v1/models", &h, None).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["chat"]);
    let (_, _, list) = call_with(addr, "/v1/pipelines", &h, None).await;
    assert_eq!(list["pipelines"].as_array().unwrap().len(), 1);
    let h = [("x-api-key", everything.secret.as_str())];
    let (_, _, list) = call_with(addr, "/v1/pipelines", &h, None).await;
    assert_eq!(list["pipelines"].as_array().unwrap().len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn metrics_need_a_key_that_may_read_them_and_count_refusals_and_keys() {
    let mock = MockProvider::start(Script::single(Reply::text(&["ok"])))
        .await
        .unwrap();
    let app = key("app", ", pipelines: [chat]");
    let scraper = key("scraper", ", pipelines: [chat], metrics: true");
    let extra = format!("keys:\n{}{}", app.entry, scraper.entry);
    let server = start(catalog(&mock, "memory", &extra)).await;
    let addr = server.addr;
    let bearer = format!("Bearer {}", app.secret);
    let (status, _, _) = call_with(
        addr,
        "/v1/pipelines/chat",
        &[("authorization", &bearer)],
        Some(r#"{"input":"hi","stream":false}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    call_with(addr, "/v1/pipelines/chat", &[], Some("{}")).await;
    call_with(
        addr,
        "/v1/pipelines/other",
        &[("authorization", &bearer)],
        Some("{}"),
    )
    .await;
    assert_eq!(
        call_with(addr, "/metrics", &[("authorization", &bearer)], None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let resp = send(
        addr,
        request_with("/metrics", &[("x-api-key", &scraper.secret)], None),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for line in [
        "sluice_auth_refusals_total{reason=\"missing\"} 1",
        "sluice_auth_refusals_total{reason=\"forbidden\"} 2",
        "sluice_requests_total{pipeline=\"chat\",model=\"gpt-4o-mini\",status=\"ok\",key=\"app\"} 1",
    ] {
        assert!(text.contains(line), "no {line} in\n{text}");
    }
    assert!(!text.contains(&app.secret) && !text.contains(&scraper.secret));
    server.stop().await;
}

#[tokio::test]
async fn rows_name_the_key_and_its_team_and_usage_groups_by_them() {
    let mock = MockProvider::start(Script::single(Reply::text(&["ok"])))
        .await
        .unwrap();
    let a = key("a", ", pipelines: [\"*\"], team: search");
    let b = key("b", ", pipelines: [\"*\"], team: search");
    let c = key("c", ", pipelines: [\"*\"]");
    let extra = format!(
        "teams:\n  search: {{}}\nkeys:\n{}{}{}",
        a.entry, b.entry, c.entry
    );
    let server = start(catalog(&mock, "memory", &extra)).await;
    let addr = server.addr;
    for (k, n) in [(&a, 2), (&b, 1), (&c, 1)] {
        for _ in 0..n {
            let (status, _, json) = call_with(
                addr,
                "/v1/chat/completions",
                &[("authorization", &format!("Bearer {}", k.secret))],
                Some(r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{json}");
        }
    }
    // A refused body is a row of its key too.
    call_with(
        addr,
        "/v1/pipelines/chat",
        &[("x-api-key", &c.secret)],
        Some(r#"{"input": 5}"#),
    )
    .await;
    let rows = server.ledger().rows_since(0).await.unwrap();
    server.stop().await;
    let by_key = report::summarize(&rows, GroupBy::Key);
    let counts: Vec<(&str, u64)> = by_key
        .iter()
        .map(|g| (g.key.as_str(), g.requests))
        .collect();
    assert_eq!(counts, [("a", 2), ("b", 1), ("c", 2)]);
    let by_team = report::summarize(&rows, GroupBy::Team);
    let counts: Vec<(&str, u64)> = by_team
        .iter()
        .map(|g| (g.key.as_str(), g.requests))
        .collect();
    assert_eq!(counts, [("-", 2), ("search", 3)]);
    assert!(rows.iter().all(|r| r.cost_micros >= 0));
    for k in [&a, &b, &c] {
        assert!(!format!("{rows:?}").contains(&k.secret));
    }
}

#[tokio::test]
async fn without_keys_sluice_listens_only_on_loopback_unless_told() {
    let mock = MockProvider::start(Script::single(Reply::text(&["ok"])))
        .await
        .unwrap();
    let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let err = Server::bind(catalog(&mock, "memory", ""), any)
        .await
        .err()
        .expect("an open server on every interface is refused");
    let text = err.to_string();
    assert!(
        text.contains("0.0.0.0:0")
            && text.contains("no API keys")
            && text.contains("allow_unauthenticated"),
        "{text}"
    );
    // Said explicitly, or with keys, it binds.
    let open = catalog(&mock, "memory", "").server.clone();
    assert!(!open.listen.ip().is_unspecified());
    let told = {
        let settings = (
            PathBuf::from("settings.yaml"),
            format!(
                "storage: memory\nserver: {{allow_unauthenticated: true}}\nproviders:\n  mock: {{kind: openai, base_url: \"{}\"}}\n",
                mock.base_url()
            ),
        );
        compile_sources(&settings, &[pipeline("chat", 10, TIMEOUTS)]).unwrap()
    };
    Server::bind(told, any).await.expect("allowed explicitly");
    let k = key("k", ", pipelines: [\"*\"]");
    Server::bind(
        catalog(&mock, "memory", &format!("keys:\n{}", k.entry)),
        any,
    )
    .await
    .expect("keys make it safe");
}

/// Two hundred requests at once on one key whose daily budget affords
/// about fifty: the key's spend never passes its budget, and most of it is
/// used; the pipeline's own budget is not involved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_daily_budget_holds_under_two_hundred_concurrent_requests() {
    let mock = MockProvider::start(Script::single(Reply::text(&[" word"; 100])))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "sluice-keys-{}-{}",
        std::process::id(),
        money::now_ms()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/ledger.db", dir.display());
    // One request reserves about 460 µ$ (prompt + the ceiling's guard) and
    // costs 210 µ$ (10 prompt tokens at $1/M, 100 completion at $2/M).
    let budget_micros: i64 = 23_000;
    let k = key(
        "tight",
        &format!(
            ", pipelines: [chat], budget: {{daily_usd: {}}}",
            budget_micros as f64 / 1e6
        ),
    );
    let free = key("free", ", pipelines: [chat]");
    let extra = format!("keys:\n{}{}", k.entry, free.entry);
    let server = start(catalog(&mock, &url, &extra)).await;
    let addr = server.addr;
    let bearer = format!("Bearer {}", k.secret);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let bearer = bearer.clone();
        tasks.push(tokio::spawn(async move {
            let resp = send(
                addr,
                request_with(
                    "/v1/pipelines/chat",
                    &[("authorization", &bearer)],
                    Some(r#"{"input":"hi","stream":false}"#),
                ),
            )
            .await;
            let status = resp.status();
            (status, body_json(resp).await)
        }));
    }
    let (mut admitted, mut rejected) = (0, 0);
    for t in tasks {
        let (status, body) = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
        match status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                rejected += 1;
                assert_eq!(body["error"]["budget"]["scope"], "key:tight", "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    // Another key is not held back by it.
    let (status, _, _) = call_with(
        addr,
        "/v1/pipelines/chat",
        &[("x-api-key", &free.secret)],
        Some(r#"{"input":"hi","stream":false}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
    let ledger = Ledger::open(&url).await.unwrap();
    let today = money::utc_day(money::now_ms());
    let spend = ledger.spend("key:tight", &today).await.unwrap();
    println!(
        "key budget {budget_micros} µ$: spent {} µ$ ({:.1}%), admitted {admitted}, rejected {rejected}",
        spend.spent_micros,
        100.0 * spend.spent_micros as f64 / budget_micros as f64
    );
    assert_eq!(admitted + rejected, 200);
    assert!(spend.spent_micros <= budget_micros, "overshoot: {spend:?}");
    assert!(
        spend.spent_micros * 100 >= budget_micros * 45,
        "far below the budget: {spend:?}"
    );
    assert_eq!(spend.reserved_micros, 0);
    assert_eq!(mock.journal().request_count(), admitted + 1);
    let rows = ledger.rows_since(0).await.unwrap();
    let tight: Vec<_> = rows
        .iter()
        .filter(|r| r.api_key.as_deref() == Some("tight"))
        .collect();
    assert_eq!(tight.len(), 200);
    assert_eq!(
        tight
            .iter()
            .filter(|r| r.status == "ok")
            .map(|r| r.cost_micros)
            .sum::<i64>(),
        spend.spent_micros
    );
    ledger.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A team's monthly budget, shared by two keys, on the ledger's clock:
/// spent on the 30th, still spent on the 31st (another day, the same
/// month), available again on the 1st.
#[tokio::test]
async fn a_teams_monthly_budget_is_shared_and_resets_with_the_month() {
    let mock = MockProvider::start(Script::single(Reply::text(&[" word"; 100])))
        .await
        .unwrap();
    // Room for two requests' reservations (about 460 µ$ each), not three.
    let a = key("a", ", pipelines: [chat], team: t");
    let b = key("b", ", pipelines: [chat], team: t, budget: {daily_usd: 10}");
    let extra = format!(
        "teams:\n  t: {{budget: {{monthly_usd: 0.0007}}}}\nkeys:\n{}{}",
        a.entry, b.entry
    );
    let server = start(catalog(&mock, "memory", &extra)).await;
    let addr = server.addr;
    let ledger = server.ledger();
    let day_ms = |s: &str| {
        // Midday UTC of a `YYYY-MM-DD`.
        let days = (0..30_000i64)
            .find(|d| money::utc_day(d * 86_400_000) == s)
            .unwrap();
        days * 86_400_000 + 43_200_000
    };
    let ask = |k: &Key| {
        let h = format!("Bearer {}", k.secret);
        async move {
            call_with(
                addr,
                "/v1/pipelines/chat",
                &[("authorization", &h)],
                Some(r#"{"input":"hi","stream":false}"#),
            )
            .await
        }
    };
    ledger.set_clock(Some(day_ms("2027-01-30")));
    assert_eq!(ask(&a).await.0, StatusCode::OK);
    assert_eq!(ask(&b).await.0, StatusCode::OK);
    let (status, head, json) = ask(&a).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{json}");
    assert_eq!(json["error"]["budget"]["scope"], "team:t@month");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("this month"),
        "{json}"
    );
    // Until 2027-02-01T00:00Z from midday on the 30th: a day and a half.
    assert_eq!(head["retry-after"], "129600");
    ledger.set_clock(Some(day_ms("2027-01-31")));
    assert_eq!(ask(&b).await.0, StatusCode::TOO_MANY_REQUESTS);
    ledger.set_clock(Some(day_ms("2027-02-01")));
    assert_eq!(ask(&b).await.0, StatusCode::OK);
    let january = ledger.spend("team:t@month", "2027-01").await.unwrap();
    let february = ledger.spend("team:t@month", "2027-02").await.unwrap();
    assert_eq!(january.spent_micros, 420);
    assert_eq!(february.spent_micros, 210);
    assert_eq!(mock.journal().request_count(), 3);
    server.stop().await;
}
