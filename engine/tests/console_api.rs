//! The console's JSON endpoints over HTTP (`/v1/overview`, `/v1/usage`,
//! `/v1/requests`, `/v1/requests/{id}`, `/v1/budgets`): after a scripted
//! series of requests (answered, timed out, refused by a budget) on a
//! SQLite ledger in a file, they show what the ledger holds, the same
//! numbers as `sluice usage`; filters narrow the listing; bad parameters
//! are a 400 that says why. With keys declared only an admin key reads
//! them (a pipeline-only key gets a 403, none a 401); without keys, on
//! loopback, they are open like the rest of the API. The console's page
//! is served without a key (it holds no data), and with a key only to an
//! admin.

mod common;

use std::net::SocketAddr;

use common::console::{self, call, catalog, temp_db};
use common::*;
use http::StatusCode;
use serde_json::Value;
use sluice::ledger::report::{self, GroupBy};
use sluice::serve::RunningServer;
use sluice_testkit::{MockProvider, Reply, Script};

const ENDPOINTS: [&str; 5] = [
    "/v1/overview",
    "/v1/usage?days=7&by=pipeline",
    "/v1/requests?limit=5",
    "/v1/requests/req-ok",
    "/v1/budgets",
];

async fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> (StatusCode, Value) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let (status, _, json) = call_with(addr, path, &headers, None).await;
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoints_show_what_the_ledger_holds() {
    let mock = console::mock().await;
    let (dir, db) = temp_db("endpoints");
    let server = RunningServer::start(catalog(&mock, &db, ""), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.addr;
    let rows = console::series(&server).await;
    let cost: i64 = rows.iter().map(|r| r.cost_micros).sum();
    assert!(cost > 0);

    // Overview: today's totals, the budgets, the alert that fired.
    let (status, o) = get(addr, "/v1/overview", None).await;
    assert_eq!(status, StatusCode::OK, "{o}");
    assert_eq!(
        (o["requests"].as_i64(), o["errors"].as_i64()),
        (Some(3), Some(2)),
        "{o}"
    );
    assert_eq!(o["cost_micros"].as_i64(), Some(cost));
    assert_eq!(o["ttft_sample"], 1);
    assert!(o["ttft_p50_ms"].as_i64().is_some());
    assert_eq!(o["streaming_now"], 0);
    let budgets = o["budgets"].as_array().unwrap();
    assert_eq!(budgets.len(), 2, "{budgets:?}");
    let chat = budgets
        .iter()
        .find(|b| b["scope"] == "pipeline:chat")
        .unwrap();
    let chat_spent = rows
        .iter()
        .filter(|r| r.pipeline == "chat")
        .map(|r| r.cost_micros)
        .sum::<i64>();
    assert_eq!(chat["spent_micros"].as_i64(), Some(chat_spent));
    assert_eq!(chat["limit_micros"], 1000);
    assert_eq!(chat["used_ppm"].as_i64(), Some(chat_spent * 1000));
    assert_eq!(chat["alert_at_ppm"], serde_json::json!([10_000, 900_000]));
    assert_eq!(
        chat["alerts_fired_ppm"],
        serde_json::json!([10_000]),
        "{chat}"
    );
    assert_eq!(o["alerts"][0]["scope"], "pipeline:chat");

    // Usage by pipeline: `sluice usage`'s numbers for the same rows.
    for (by, group) in [
        ("pipeline", GroupBy::Pipeline),
        ("model", GroupBy::Model),
        ("key", GroupBy::Key),
    ] {
        let (status, u) = get(addr, &format!("/v1/usage?days=1&by={by}"), None).await;
        assert_eq!(status, StatusCode::OK, "{u}");
        let expected = report::summarize(&rows, group);
        let groups = u["groups"].as_array().unwrap();
        assert_eq!(groups.len(), expected.len(), "{u}");
        for (g, e) in groups.iter().zip(&expected) {
            assert_eq!(g["key"], e.key.as_str());
            assert_eq!(g["requests"].as_u64(), Some(e.requests));
            assert_eq!(g["errors"].as_u64(), Some(e.errors));
            assert_eq!(g["prompt_tokens"].as_i64(), Some(e.prompt_tokens));
            assert_eq!(g["completion_tokens"].as_i64(), Some(e.completion_tokens));
            assert_eq!(g["cost_micros"].as_i64(), Some(e.cost_micros));
            assert_eq!(g["cost_usd"], e.cost_usd.as_str());
        }
        assert_eq!(u["total"]["requests"], 3);
    }

    // The listing, newest first; filters narrow it.
    let (_, all) = get(addr, "/v1/requests", None).await;
    let ids: Vec<&str> = all["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["req-tiny", "req-slow", "req-ok"]);
    assert_eq!(all["next"], Value::Null);
    for (query, expected) in [
        ("status=ok", vec!["req-ok"]),
        ("pipeline=slow", vec!["req-slow"]),
        ("status=budget_rejected", vec!["req-tiny"]),
        ("pipeline=chat&status=timeout", vec![]),
        (
            "since=1h&model=gpt-4o-mini",
            vec!["req-tiny", "req-slow", "req-ok"],
        ),
    ] {
        let (status, r) = get(addr, &format!("/v1/requests?{query}"), None).await;
        assert_eq!(status, StatusCode::OK, "{r}");
        let got: Vec<&str> = r["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["request_id"].as_str().unwrap())
            .collect();
        assert_eq!(got, expected, "{query}");
    }
    let (_, page) = get(addr, "/v1/requests?limit=2", None).await;
    let next = page["next"].as_str().unwrap().to_string();
    let (_, rest) = get(addr, &format!("/v1/requests?before={next}"), None).await;
    assert_eq!(rest["requests"][0]["request_id"], "req-ok");
    assert_eq!(rest["requests"].as_array().unwrap().len(), 1);
    let (status, one) = get(addr, "/v1/requests/req-slow", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["rows"][0]["status"], "timeout");
    assert_eq!(one["rows"][0]["error_code"], "timeout.first_token");

    // Bad parameters say why; an unknown id is a 404.
    for bad in [
        "/v1/usage?days=0",
        "/v1/usage?by=color",
        "/v1/usage?from=2026-13&to=2026-12-01",
        "/v1/requests?limit=100000",
        "/v1/requests?before=nope",
        "/v1/requests?since=soon",
    ] {
        let (status, e) = get(addr, bad, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {e}");
        assert_eq!(e["error"]["code"], "invalid_request", "{bad}");
    }
    assert_eq!(
        get(addr, "/v1/requests/nobody", None).await.0,
        StatusCode::NOT_FOUND
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_keys_read_the_endpoints() {
    let mock = MockProvider::start(Script::single(Reply::text(&["Hello"])))
        .await
        .unwrap();
    let admin = api_key("ops", ", pipelines: [chat], admin: true");
    let bot = api_key("bot", r#", pipelines: ["*"]"#);
    let metrics = api_key("prom", ", pipelines: [chat], metrics: true");
    let keys = format!("keys:\n{}{}{}", admin.entry, bot.entry, metrics.entry);
    let (dir, db) = temp_db("keys");
    let server = RunningServer::start(catalog(&mock, &db, &keys), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.addr;
    assert_eq!(
        call(addr, "chat", "req-ok", Some(&bot.secret)).await,
        StatusCode::OK
    );
    for path in ENDPOINTS {
        let (status, body) = get(addr, path, Some(&admin.secret)).await;
        // The request may still be settling: its row is there from the start.
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        for key in [&bot.secret, &metrics.secret] {
            let (status, body) = get(addr, path, Some(key)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
            assert_eq!(body["error"]["code"], "forbidden");
        }
        assert_eq!(
            get(addr, path, None).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    // The console's page: without a key it is the empty shell that asks
    // for one; with a key, only an admin's.
    let page = |key: Option<String>| async move {
        let auth = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let (status, headers, _) = call_with(addr, "/console", &headers, None).await;
        (status, headers)
    };
    let (status, headers) = page(None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert_eq!(page(Some(admin.secret.clone())).await.0, StatusCode::OK);
    assert_eq!(
        page(Some(bot.secret.clone())).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        page(Some("sk-sluice-unknown".into())).await.0,
        StatusCode::UNAUTHORIZED
    );
    // An admin key reads the metrics too.
    let (status, _, _) = call_with(
        addr,
        "/metrics",
        &[("authorization", &format!("Bearer {}", admin.secret))],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
