//! The console's tests' ledger (`console_api.rs`, `console_browser.rs`):
//! three pipelines on the mock and a SQLite file, and the scripted series
//! of requests whose rows the console must show.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;
use sluice::compile::{Catalog, compile_sources};
use sluice::ledger::report::Row;
use sluice::serve::RunningServer;
use sluice_testkit::{Fault, MockProvider, Reply, Script};

use super::call_with;

/// The mock for [`series`]: a short answer, then one that comes too late.
pub async fn mock() -> MockProvider {
    MockProvider::start(
        Script::single(Reply::text(&["Hello", " there"]))
            .then(Reply::text(&["late"]).fault(Fault::DelayHeaders(Duration::from_secs(5)))),
    )
    .await
    .unwrap()
}

/// `chat` (a budget with alerts), `slow` (a 300 ms first-token deadline)
/// and `tiny` (a budget nothing fits in), on a SQLite file.
pub fn catalog(mock: &MockProvider, db: &str, keys: &str) -> Catalog {
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: \"sqlite:{db}\"\nserver: {{shutdown_grace: 2s}}\nproviders:\n  mock: {{kind: openai, base_url: \"{}\"}}\nprices:\n  gpt-4o-mini: {{input: 1.0, output: 2.0}}\n{keys}",
            mock.base_url()
        ),
    );
    let pipeline = |name: &str, extra: &str| {
        (
            PathBuf::from(format!("{name}.yaml")),
            format!(
                "name: {name}\nmodel: {{provider: mock, name: gpt-4o-mini}}\nlimits: {{max_tokens: 100}}\n{extra}"
            ),
        )
    };
    compile_sources(
        &settings,
        &[
            pipeline(
                "chat",
                "timeouts: {first_token: 5s, total: 30s}\nbudget: {daily_usd: 0.001, alert_at: [0.01, 0.9]}\n",
            ),
            pipeline("slow", "timeouts: {first_token: 300ms, total: 30s}\n"),
            pipeline("tiny", "budget: {daily_usd: 0.000001}\n"),
        ],
    )
    .unwrap_or_else(|d| panic!("{d:#?}"))
}

pub fn temp_db(tag: &str) -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("sluice-console-{tag}-{}", super::pg::uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("ledger.db").display().to_string();
    (dir, db)
}

/// Calls `pipeline` with the request id `id` (and `key`); the status.
pub async fn call(addr: SocketAddr, pipeline: &str, id: &str, key: Option<&str>) -> StatusCode {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers: Vec<(&str, &str)> = vec![("x-request-id", id)];
    headers.extend(auth.iter().map(|a| ("authorization", a.as_str())));
    let (status, _, _) = call_with(
        addr,
        &format!("/v1/pipelines/{pipeline}"),
        &headers,
        Some(r#"{"input":"hi","stream":false}"#),
    )
    .await;
    status
}

/// The series: `req-ok` answered by `chat`, `req-slow` timed out on `slow`,
/// `req-tiny` refused by `tiny`'s budget; returns once every row is
/// settled and the chat budget's alert is claimed, with the rows.
pub async fn series(server: &RunningServer) -> Vec<Row> {
    let addr = server.addr;
    assert_eq!(call(addr, "chat", "req-ok", None).await, StatusCode::OK);
    assert_eq!(
        call(addr, "slow", "req-slow", None).await,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert_eq!(
        call(addr, "tiny", "req-tiny", None).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let ledger = server.ledger();
    let today = sluice::ledger::money::utc_day(ledger.now_ms());
    let mut rows = Vec::new();
    for _ in 0..200 {
        rows = ledger.rows_since(0).await.unwrap();
        if rows.len() == 3
            && rows.iter().all(|r| r.status != "pending")
            && !ledger.alerts(&today).await.unwrap().is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rows.len(), 3, "{rows:?}");
    rows
}
