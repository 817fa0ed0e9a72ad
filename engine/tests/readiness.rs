//! `GET /readyz`: open to load balancers (no key needed even when keys
//! are declared), 200 while the ledger takes writes, 503 with the reason
//! once it cannot; `/healthz` stays a liveness probe that answers 200.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use sluice::compile::compile_sources;
use sluice::serve::RunningServer;
use sluice_testkit::{MockProvider, Reply, Script};

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, serde_json::Value) {
    let req = Request::get(path)
        .header("host", "sluice.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send(addr, req).await;
    (resp.status(), body_json(resp).await)
}

#[tokio::test]
async fn readyz_says_whether_the_ledger_takes_writes() {
    let mock = MockProvider::start(Script::single(Reply::text(&["ok"])))
        .await
        .unwrap();
    let key = api_key("k", ", pipelines: [\"*\"]");
    let dir = std::env::temp_dir().join(format!(
        "sluice-readyz-{}-{}",
        std::process::id(),
        sluice::ledger::money::now_ms()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let settings = (
        std::path::PathBuf::from("settings.yaml"),
        format!(
            "storage: \"sqlite:{}/ledger.db\"\nproviders:\n  mock: {{kind: openai, base_url: \"{}\"}}\nkeys:\n{}",
            dir.display(),
            mock.base_url(),
            key.entry
        ),
    );
    let catalog = compile_sources(&settings, &[pipeline("chat", 10, TIMEOUTS)]).unwrap();
    let server = RunningServer::start(catalog, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.addr;
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["config_version"], 1);
    // The ledger stops taking writes: once the last answer is a second
    // old, the probe says so; liveness does not change.
    server.ledger().close().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(
        body["reason"],
        "the ledger (sqlite) cannot be written: the ledger is closed"
    );
    assert_eq!(get(addr, "/healthz").await.0, StatusCode::OK);
    // Everything else still needs a key.
    assert_eq!(get(addr, "/v1/pipelines").await.0, StatusCode::UNAUTHORIZED);
    server.signal_shutdown();
    let _ = std::fs::remove_dir_all(dir);
}
