//! No exit path leaves a row `pending`, black-box: a SQLite ledger whose
//! settlements are made to fail (a trigger refuses them, as a full disk or a
//! broken value would). The request still answers; its row is settled as
//! `settle_failed` after the retries, or, when even that is refused, as
//! `interrupted` at shutdown, its reservation counted as spent either way.

mod common;

use std::path::PathBuf;

use common::*;
use http::StatusCode;
use sluice::compile::{Catalog, compile_sources};
use sluice::ledger::{Ledger, money};
use sluice::serve::RunningServer;
use sluice_testkit::{MockProvider, Reply, Script};

fn catalog(mock: &MockProvider, storage: &str) -> Catalog {
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: \"{storage}\"\nserver: {{shutdown_grace: 2s}}\nproviders:\n  mock:\n    kind: openai\n    base_url: {}\nprices:\n  gpt-4o-mini: {{input: 1.0, output: 2.0}}\n",
            mock.base_url()
        ),
    );
    let pipeline = (
        PathBuf::from("chat.yaml"),
        "name: chat\nmodel: {provider: mock, name: gpt-4o-mini}\nlimits: {max_tokens: 100}\ntimeouts: {first_token: 5s, total: 30s}\nbudget: {daily_usd: 1.0}\n".to_string(),
    );
    compile_sources(&settings, &[pipeline]).unwrap_or_else(|d| panic!("{d:#?}"))
}

/// Serves one request on a ledger where settling with any status in
/// `refused` fails, stops the server, and returns the row's status, error
/// code and cost, and the day's (spent, reserved).
async fn settle_refusing(refused: &[&str]) -> (String, Option<String>, i64, i64, (i64, i64)) {
    let dir = std::env::temp_dir().join(format!(
        "sluice-settle-{}-{}",
        std::process::id(),
        uuid_like()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/ledger.db", dir.display());
    Ledger::open(&url).await.unwrap().close().await;
    let list = refused
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    rusqlite::Connection::open(dir.join("ledger.db"))
        .unwrap()
        .execute_batch(&format!(
            "CREATE TRIGGER refuse_settle BEFORE UPDATE OF status ON requests \
             WHEN NEW.status IN ({list}) BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
        ))
        .unwrap();

    let mock = MockProvider::start(Script::single(Reply::text(&["a", " b"])))
        .await
        .unwrap();
    let server = RunningServer::start(catalog(&mock, &url), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let resp = post(server.addr, r#"{"input":"hi","stream":false}"#).await;
    // The client's answer does not depend on the ledger's trouble.
    assert_eq!(resp.status(), StatusCode::OK);
    let body = body_json(resp).await;
    assert_eq!(body["output"], "a b", "{body}");
    server.stop().await;

    let ledger = Ledger::open(&url).await.unwrap();
    let rows = ledger.rows_since(0).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let r = rows.into_iter().next().unwrap();
    let spend = ledger
        .spend("pipeline:chat", &money::utc_day(money::now_ms()))
        .await
        .unwrap();
    ledger.close().await;
    let _ = std::fs::remove_dir_all(dir);
    (
        r.status,
        r.error_code,
        r.cost_micros,
        r.reserved_micros,
        (spend.spent_micros, spend.reserved_micros),
    )
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_that_keeps_failing_is_recorded_as_settle_failed() {
    let (status, code, cost, reserved, spend) = settle_refusing(&["ok"]).await;
    assert_eq!(status, "settle_failed");
    assert_eq!(code.as_deref(), Some("settle_failed"));
    assert!(reserved > 0);
    // What it reserved counts as spent: never less than it may have cost.
    assert_eq!(cost, reserved);
    assert_eq!(spend, (reserved, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_cannot_be_settled_at_all_is_interrupted_at_shutdown() {
    let (status, code, cost, reserved, spend) = settle_refusing(&["ok", "settle_failed"]).await;
    assert_eq!(status, "interrupted");
    assert_eq!(code.as_deref(), Some("interrupted"));
    assert_eq!(cost, reserved);
    assert_eq!(spend, (reserved, 0));
}
