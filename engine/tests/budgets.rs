//! Ledger, costs, budgets, alerts and metrics, black-box: the real server
//! in front of the mock provider. The concurrency test runs in real time on
//! SQLite (its worker threads do not mix with a paused clock); the others
//! use the in-memory ledger on a paused clock.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;
use sluice::compile::{Catalog, compile_sources};
use sluice::ledger::{Ledger, Price, money};
use sluice::provider::{Message, Role};
use sluice::serve::RunningServer;
use sluice_testkit::{MockProvider, Reply, Script};

const PRICES: &str =
    "prices:\n  gpt-4o-mini: {input: 1.0, output: 2.0}\n  tiny: {input: 0.1, output: 0.1}\n";
const PRICE: Price = Price {
    input_per_m: 1_000_000,
    output_per_m: 2_000_000,
    cached_input_per_m: 1_000_000,
    cache_write_per_m: 1_000_000,
    cache_write_1h_per_m: 2_000_000,
};

fn catalog(mock: &MockProvider, storage: &str, budget: &str, extra_settings: &str) -> Catalog {
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: \"{storage}\"\nserver: {{shutdown_grace: 2s}}\nproviders:\n  mock:\n    kind: openai\n    base_url: {}\n{PRICES}{extra_settings}",
            mock.base_url()
        ),
    );
    let pipeline = (
        PathBuf::from("chat.yaml"),
        format!(
            "name: chat\nmodel: {{provider: mock, name: gpt-4o-mini}}\nsystem: Be brief.\nlimits: {{max_tokens: 100}}\ntimeouts: {{first_token: 5s, total: 30s}}\n{budget}"
        ),
    );
    compile_sources(&settings, &[pipeline]).unwrap_or_else(|d| panic!("{d:#?}"))
}

/// What one request through `chat` reserves with the prompt {"input":"hi"}.
fn reservation() -> i64 {
    let prompt = [
        Message::new(Role::System, "Be brief."),
        Message::new(Role::User, "hi"),
    ];
    sluice::budget::reservation(&PRICE, sluice::tokens::count_prompt(&prompt), 100, 1, false)
}

fn temp_db() -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("sluice-budget-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/ledger.db", dir.display());
    (dir, url)
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// 100 words: the mock reports prompt 10, completion 100, so each request
/// costs 10 * 1 + 100 * 2 = 210 micro-dollars, close to its reservation.
fn hundred_words() -> Reply {
    Reply::text(&[" word"; 100])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_never_spend_past_the_budget_sqlite() {
    let mock = MockProvider::start(Script::single(hundred_words()))
        .await
        .unwrap();
    let (dir, url) = temp_db();
    let reserve = reservation();
    let budget_micros = 50 * reserve;
    let budget_usd = budget_micros as f64 / 1e6;
    let server = RunningServer::start(
        catalog(
            &mock,
            &url,
            &format!("budget: {{daily_usd: {budget_usd}}}\n"),
            "",
        ),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let addr = server.addr;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        tasks.push(tokio::spawn(async move {
            let resp = post(addr, r#"{"input":"hi","stream":false}"#).await;
            let status = resp.status();
            let retry_after = resp.headers().get("retry-after").cloned();
            (status, retry_after, body_json(resp).await)
        }));
    }
    let (mut admitted, mut rejected) = (0, 0);
    for t in tasks {
        let (status, retry_after, body) = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
        match status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                rejected += 1;
                assert_eq!(body["error"]["code"], "budget_exhausted");
                assert_eq!(body["error"]["budget"]["scope"], "pipeline:chat");
                let secs: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
                assert!(
                    (1..=86_400).contains(&secs),
                    "Retry-After {secs} is not the time to midnight UTC"
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    server.stop().await;
    assert_eq!(admitted + rejected, 200);
    let ledger = Ledger::open(&url).await.unwrap();
    let today = money::utc_day(money::now_ms());
    let spend = ledger.spend("pipeline:chat", &today).await.unwrap();
    let rows = ledger.rows_since(0).await.unwrap();
    println!(
        "sqlite: budget {budget_micros} µ$, spent {} µ$ ({:.1}%), reserved {}, admitted {admitted}, rejected {rejected}",
        spend.spent_micros,
        100.0 * spend.spent_micros as f64 / budget_micros as f64,
        spend.reserved_micros
    );
    assert!(
        spend.spent_micros <= budget_micros,
        "overshoot: {spend:?} > {budget_micros}"
    );
    // The first 50 reservations always fit, and each settles at 210 of its
    // ~460 reserved (the reservation covers the ceiling's guard, 214
    // completion tokens for max_tokens 100): at least 45% of the budget is
    // used, whatever the interleaving (later arrivals may find the rest
    // reserved by requests still running, and be refused).
    assert!(admitted >= 50, "only {admitted} admitted");
    assert!(
        spend.spent_micros * 100 >= budget_micros * 45,
        "far below the budget: {spend:?}"
    );
    assert_eq!(spend.reserved_micros, 0);
    assert_eq!(rows.len(), 200);
    assert_eq!(rows.iter().filter(|r| r.status == "ok").count(), admitted);
    assert_eq!(
        rows.iter()
            .filter(|r| r.status == "budget_rejected")
            .count(),
        rejected
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r.status == "ok")
            .map(|r| r.cost_micros)
            .sum::<i64>(),
        spend.spent_micros
    );
    assert_eq!(
        mock.journal().request_count(),
        admitted,
        "a rejected request reached the provider"
    );
    ledger.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(start_paused = true)]
async fn usage_carries_cost_and_the_ledger_row_matches() {
    let mock = MockProvider::start(Script::single(Reply::text(&["a", " b", " c"])))
        .await
        .unwrap();
    let server = RunningServer::start(
        catalog(&mock, "memory", "", ""),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let events = SseReader::new(post(server.addr, r#"{"input":"hi"}"#).await)
        .collect()
        .await;
    let usage = &find(&events, "usage").unwrap().data;
    // prompt 10 * 1 + completion 3 * 2 = 16 micro-dollars.
    assert_eq!(usage["cost_micros"], 16);
    assert_eq!(usage["cost_usd"], "0.000016");
    assert_eq!(usage["estimated"], false);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn downgrade_switches_to_the_cheaper_model_and_says_so() {
    let mock = MockProvider::start(Script::single(Reply::text(&["ok"])))
        .await
        .unwrap();
    // Affords a reservation at the cheap price only.
    let budget = "budget: {daily_usd: 0.0001, on_exhausted: downgrade, downgrade_to: {provider: mock, name: tiny}}\n";
    let server = RunningServer::start(
        catalog(&mock, "memory", budget, ""),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let events = SseReader::new(post(server.addr, r#"{"input":"hi"}"#).await)
        .collect()
        .await;
    let start = &find(&events, "start").unwrap().data;
    // The model as the provider names it (the mock, whatever it is asked).
    assert_eq!(start["model"], "mock-model");
    assert_eq!(start["downgraded_from"], "gpt-4o-mini");
    assert_eq!(mock.journal().requests()[0].body["model"], "tiny");
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn metrics_are_scraped_in_prometheus_text_format() {
    let mock = MockProvider::start(Script::single(Reply::text(&["a", " b", " c"])))
        .await
        .unwrap();
    let server = RunningServer::start(
        catalog(&mock, "memory", "budget: {daily_usd: 1.0}\n", ""),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    for _ in 0..2 {
        SseReader::new(post(server.addr, r#"{"input":"hi"}"#).await)
            .collect()
            .await;
    }
    let resp = send(
        server.addr,
        http::Request::get("/metrics")
            .header("host", "t")
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let samples = parse_prometheus(&text);
    let get = |name: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{text}"))
    };
    assert_eq!(
        get(
            "sluice_requests_total",
            &[
                ("pipeline", "chat"),
                ("model", "gpt-4o-mini"),
                ("status", "ok")
            ]
        ),
        2.0
    );
    assert_eq!(get("sluice_tokens_total", &[("kind", "completion")]), 6.0);
    assert_eq!(get("sluice_tokens_total", &[("kind", "prompt")]), 20.0);
    assert_eq!(
        get("sluice_cost_micro_usd_total", &[("pipeline", "chat")]),
        32.0
    );
    assert_eq!(
        get(
            "sluice_time_to_first_token_seconds_count",
            &[("pipeline", "chat")]
        ),
        2.0
    );
    assert_eq!(
        get(
            "sluice_stream_duration_seconds_count",
            &[("pipeline", "chat")]
        ),
        2.0
    );
    assert_eq!(get("sluice_active_streams", &[("pipeline", "chat")]), 0.0);
    assert!((get("sluice_budget_used_ratio", &[("scope", "pipeline:chat")]) - 32e-6).abs() < 1e-9);
    assert!(text.trim_end().ends_with("# EOF"));
    server.stop().await;
}

/// (name, labels, value) of every sample line.
/// A metric name, its labels, and its value.
type Sample = (String, Vec<(String, String)>, f64);

fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (head, value) = line.rsplit_once(' ').expect("sample line has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").expect("label pair");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (n.to_string(), labels)
            }
            None => (head.to_string(), Vec::new()),
        };
        out.push((name, labels, value));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_fires_once_per_threshold_and_day_even_across_restarts() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        // The first delivery fails: the alert is retried, not lost.
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .expect(1)
        .mount(&receiver)
        .await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&receiver)
        .await;
    let mock = MockProvider::start(Script::single(hundred_words()))
        .await
        .unwrap();
    let (dir, url) = temp_db();
    let alerts = format!("alerts: {{webhook_url: \"{}/hook\"}}\n", receiver.uri());
    // 210 µ$ per request against 1000 µ$: 21% after one, 42% after two.
    let budget = "budget: {daily_usd: 0.001, alert_at: [0.2, 0.9]}\n";
    for _ in 0..2 {
        let server = RunningServer::start(
            catalog(&mock, &url, budget, &alerts),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let resp = post(server.addr, r#"{"input":"hi","stream":false}"#).await;
        assert_eq!(resp.status(), StatusCode::OK);
        // Let the delivery (and its retry) happen before stopping.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.stop().await;
    }
    let received = receiver.received_requests().await.unwrap();
    assert_eq!(
        received.len(),
        2,
        "one failed attempt and one delivery, nothing after the restart"
    );
    let alert: serde_json::Value = serde_json::from_slice(&received[1].body).unwrap();
    assert!(alert["text"].as_str().unwrap().contains("pipeline:chat"));
    assert_eq!(alert["scope"], "pipeline:chat");
    assert_eq!(alert["threshold"], 0.2);
    assert_eq!(alert["budget_usd"], "0.001000");
    assert_eq!(alert["spent_micros"], 210);
    receiver.verify().await;
    let _ = std::fs::remove_dir_all(dir);
    let _ = Arc::new(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_usage_reports_requests_tokens_cost_and_errors_from_the_ledger() {
    let mock = MockProvider::start(Script::single(Reply::text(&["a", " b", " c"])).then(
        Reply::text(&["x"]).fault(sluice_testkit::Fault::Status {
            status: 500,
            retry_after: None,
        }),
    ))
    .await
    .unwrap();
    let (dir, url) = temp_db();
    let server = RunningServer::start(catalog(&mock, &url, "", ""), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        post(server.addr, r#"{"input":"hi","stream":false}"#)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        post(server.addr, r#"{"input":"hi","stream":false}"#)
            .await
            .status(),
        StatusCode::BAD_GATEWAY
    );
    server.stop().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "usage",
            "--storage",
            &url,
            "--by",
            "model",
            "--json",
            "--since",
            "1h",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let g = &report["groups"][0];
    assert_eq!(g["key"], "mock/gpt-4o-mini");
    assert_eq!(g["requests"], 2);
    assert_eq!(g["errors"], 1);
    assert_eq!(g["error_rate"], 0.5);
    assert_eq!(g["prompt_tokens"], 10);
    assert_eq!(g["completion_tokens"], 3);
    assert_eq!(g["cost_micros"], 16);
    assert!(g["ttft_p50_ms"].is_number());
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["usage", "--storage", &url, "--by", "pipeline"])
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.starts_with("pipeline"), "{table}");
    assert!(table.contains("0.000016"), "{table}");
    let _ = std::fs::remove_dir_all(dir);
}
