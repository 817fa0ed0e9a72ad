//! A provider that reports absurd usage, black-box: the real server in
//! front of the mock, whose second answer reports `u64::MAX` tokens while
//! the first request is still streaming. Both rows settle, the budget is
//! never charged past what the request reserved, the row is flagged, the
//! metric counts it, and `sluice usage` shows no absurd or negative total.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use http::StatusCode;
use sluice::compile::{Catalog, compile_sources};
use sluice::ledger::{Ledger, money, report};
use sluice::serve::RunningServer;
use sluice_testkit::{Fault, MockProvider, Reply, Script};

/// An OpenAI stream that says "hi" and then reports `u64::MAX` tokens both
/// ways: what a broken provider, or a proxy rewriting bodies, may send.
const ABSURD_USAGE: &str = concat!(
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"hi\"}}]}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":18446744073709551615,\"completion_tokens\":18446744073709551615,\"total_tokens\":18446744073709551615}}\n\n",
    "data: [DONE]\n\n",
);

const DAILY_USD: f64 = 1.0;

fn catalog(mock: &MockProvider, storage: &str, extra_settings: &str) -> Catalog {
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: \"{storage}\"\nserver: {{shutdown_grace: 2s}}\nproviders:\n  mock:\n    kind: openai\n    base_url: {}\nprices:\n  gpt-4o-mini: {{input: 1.0, output: 2.0}}\n{extra_settings}",
            mock.base_url()
        ),
    );
    let pipeline = (
        PathBuf::from("chat.yaml"),
        format!(
            "name: chat\nmodel: {{provider: mock, name: gpt-4o-mini}}\nsystem: Be brief.\nlimits: {{max_tokens: 100}}\ntimeouts: {{first_token: 5s, idle: 30s, total: 60s}}\nbudget: {{daily_usd: {DAILY_USD}}}\n"
        ),
    );
    compile_sources(&settings, &[pipeline]).unwrap_or_else(|d| panic!("{d:#?}"))
}

fn with_id(id: &str, body: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = post_json("/v1/pipelines/chat", body);
    req.headers_mut()
        .insert("x-request-id", id.parse().unwrap());
    req
}

/// The first request stalls mid-stream (in flight, its reservation held)
/// while the second settles `u64::MAX` tokens; then the first finishes.
/// `ledger` reads the rows; returns them with the server's metrics text.
async fn absurd_usage_with_a_request_in_flight(
    storage: &str,
    extra_settings: &str,
    stall: Duration,
) -> (Vec<report::Row>, String, RunningServer) {
    let slow = Reply::text(&["one", " two", " three"]).fault(Fault::StallAfter {
        events: 2,
        duration: Some(stall),
    });
    let mock = MockProvider::start(Script::single(slow).then(Reply::recorded(ABSURD_USAGE)))
        .await
        .unwrap();
    let server = RunningServer::start(
        catalog(&mock, storage, extra_settings),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let mut slow = SseReader::new(send(server.addr, with_id("slow", r#"{"input":"hi"}"#)).await);
    // The slow request's first chunk arrived: it is in flight.
    assert_eq!(slow.next().await.unwrap().name, "start");

    let absurd = send(
        server.addr,
        with_id("absurd", r#"{"input":"hi","stream":false}"#),
    )
    .await;
    assert_eq!(absurd.status(), StatusCode::OK);
    let body = body_json(absurd).await;
    // The client is told what was billed: within the request's bounds.
    let completion = body["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(completion <= 100 + 10 + 16, "{body}");

    let rest = slow.collect().await;
    assert_eq!(rest.last().unwrap().name, "done", "{rest:?}");
    let metrics = scrape(&server).await;
    let mut rows = server.ledger().rows_since(0).await.unwrap();
    rows.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    (rows, metrics, server)
}

async fn scrape(server: &RunningServer) -> String {
    let resp = send(
        server.addr,
        http::Request::get("/metrics")
            .header("host", "t")
            .body(Default::default())
            .unwrap(),
    )
    .await;
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

fn check_rows(rows: &[report::Row], spent: i64) {
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let (absurd, slow) = (&rows[0], &rows[1]);
    assert_eq!(
        (absurd.request_id.as_str(), slow.request_id.as_str()),
        ("absurd", "slow")
    );
    for r in rows {
        assert_eq!(r.status, "ok", "{r:#?}");
        assert!(r.prompt_tokens >= 0 && r.completion_tokens >= 0, "{r:#?}");
        assert!(r.cost_micros <= r.reserved_micros, "{r:#?}");
    }
    let why = absurd
        .usage_anomaly
        .as_deref()
        .expect("the absurd row is flagged");
    assert!(why.contains("18446744073709551615"), "{why}");
    assert!(why.contains("max_tokens"), "{why}");
    assert_eq!(slow.usage_anomaly, None);
    assert_eq!(slow.completion_tokens, 3);
    // The budget was charged exactly what the rows say, and no more than
    // they reserved.
    assert_eq!(absurd.cost_micros + slow.cost_micros, spent);
    let groups = report::summarize(rows, report::GroupBy::Pipeline);
    assert_eq!(groups[0].usage_anomalies, 1);
    assert!(groups[0].completion_tokens < 1_000, "{groups:?}");
}

#[tokio::test(start_paused = true)]
async fn absurd_usage_settles_both_rows_with_a_request_in_flight_in_memory() {
    let (rows, metrics, server) =
        absurd_usage_with_a_request_in_flight("memory", "", Duration::from_secs(10)).await;
    let spend = server
        .ledger()
        .spend("pipeline:chat", &money::utc_day(money::now_ms()))
        .await
        .unwrap();
    assert_eq!(spend.reserved_micros, 0);
    check_rows(&rows, spend.spent_micros);
    assert!(
        metrics.contains(
            "sluice_usage_anomalies_total{pipeline=\"chat\",model=\"gpt-4o-mini\",kind=\"above_max_tokens\"} 1"
        ),
        "{metrics}"
    );
    server.stop().await;
}

/// On SQLite, where the overflowing sum once became a REAL that made every
/// later settlement fail; read back from the file after a clean stop. The
/// alert webhook hears of it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_usage_settles_both_rows_with_a_request_in_flight_on_sqlite() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&receiver)
        .await;
    let alerts = format!("alerts: {{webhook_url: \"{}/hook\"}}\n", receiver.uri());
    let dir = std::env::temp_dir().join(format!(
        "sluice-usage-{}-{}",
        std::process::id(),
        money::now_ms()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/ledger.db", dir.display());
    // Real time here (the ledger has a writer thread): the stall is long
    // enough for the other request to be served in the meantime, and the
    // outcome checked does not depend on it.
    let (_, _, server) =
        absurd_usage_with_a_request_in_flight(&url, &alerts, Duration::from_millis(500)).await;
    // Shutdown waits for the alert's delivery (a tracked task).
    server.stop().await;
    receiver.verify().await;
    let received = receiver.received_requests().await.unwrap();
    let alert: serde_json::Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(alert["kind"], "usage_anomaly");
    assert_eq!(alert["pipeline"], "chat");
    assert!(
        alert["reason"]
            .as_str()
            .unwrap()
            .contains("18446744073709551615"),
        "{alert}"
    );
    let ledger = Ledger::open(&url).await.unwrap();
    let spend = ledger
        .spend("pipeline:chat", &money::utc_day(money::now_ms()))
        .await
        .unwrap();
    assert_eq!(spend.reserved_micros, 0);
    assert!(spend.spent_micros <= (DAILY_USD * 1e6) as i64);
    let mut rows = ledger.rows_since(0).await.unwrap();
    rows.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    check_rows(&rows, spend.spent_micros);
    ledger.close().await;
    let _ = std::fs::remove_dir_all(dir);
}
