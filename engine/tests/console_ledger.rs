//! The console's reads from the ledger (`ledger::console`) on every
//! backend: the in-memory ledger, SQLite in memory (read through the
//! writer), SQLite in a file (through its read-only connection) and
//! Postgres when `SLUICE_TEST_POSTGRES_URL` is set. One scenario of
//! requests over two days (ok, ceiling, timeout, budget rejections, a
//! pending row, keys and teams, a usage anomaly) and then:
//! - usage by day and every grouping equals the same sums over the rows
//!   (the triggers that keep `usage_days` miss no insert or update), and
//!   `sluice usage`'s totals for the range;
//! - listing the requests newest first, filtered and page by page through
//!   rows that started in the same millisecond, loses and repeats none;
//! - an alert claimed is listed for its day.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice::ledger::console::{self, Cursor, RequestFilter, UsageBy};
use sluice::ledger::report::{self, GroupBy};
use sluice::ledger::{Admit, Ledger, Opening, Scope, Settlement, money};

const DAY1_MS: i64 = 1_780_000_000_000; // 2026-05-28
const DAY2_MS: i64 = DAY1_MS + 86_400_000;
const DAY3_MS: i64 = DAY2_MS + 86_400_000;

fn opening(id: &str, pipeline: &str, model: &str, key: Option<(&str, &str)>) -> Opening {
    Opening {
        id: id.into(),
        request_id: format!("req-{id}"),
        pipeline: pipeline.into(),
        provider: "prov".into(),
        model: model.into(),
        api_key: key.map(|(k, _)| k.into()),
        team: key.map(|(_, t)| t.into()),
        rates: Vec::new(),
        reserve_micros: 1_000,
        scopes: vec![Scope {
            key: "global".into(),
            limit_micros: 10_000,
        }],
    }
}

fn settled(status: &'static str, cost: i64, model: &str) -> Settlement {
    Settlement {
        status,
        prompt_tokens: 100,
        completion_tokens: if status == "ok" { 40 } else { 0 },
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        cache_write_1h_tokens: 0,
        estimated: status != "ok",
        cost_micros: cost,
        ttft_ms: (status == "ok").then_some(12),
        duration_ms: 80,
        tool_calls: 0,
        error_code: (status == "timeout").then_some("timeout.idle"),
        provider: "prov".into(),
        model: model.into(),
        usage_anomaly: (cost == 7).then(|| "completion over max_tokens".to_string()),
    }
}

/// The scenario: 14 rows over two days, every path that writes a row.
async fn scenario(l: &Ledger) {
    let ci = Some(("ci-bot", "search"));
    let app = Some(("app", "web"));
    l.set_clock(Some(DAY1_MS));
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("r{n:02}")
    };
    for (pipeline, model, key, status, cost) in [
        ("support", "m1", ci, "ok", 300),
        ("support", "m1", ci, "ok", 7),
        ("support", "m2", app, "ceiling", 500),
        ("search", "m1", None, "timeout", 100),
        ("search", "m1", app, "ok", 250),
    ] {
        let id = next();
        let admit = l
            .open_request(&opening(&id, pipeline, model, key))
            .await
            .unwrap();
        assert_eq!(admit, Admit::Admitted);
        // The provider named another model: the row moves group.
        let answered = if model == "m2" { "m2-2025" } else { model };
        l.settle(&id, &settled(status, cost, answered))
            .await
            .unwrap();
    }
    // Refused before any provider: never pending, an error.
    let id = next();
    l.record_rejected(
        &opening(&id, "support", "m1", ci),
        "budget_rejected",
        "budget_exhausted",
    )
    .await
    .unwrap();
    // Still streaming: a request, not an error, no cost yet.
    let id = next();
    l.open_request(&opening(&id, "search", "m1", None))
        .await
        .unwrap();

    l.set_clock(Some(DAY2_MS));
    for (pipeline, status, cost) in [
        ("support", "ok", 1_000),
        ("support", "ok", 1_200),
        ("search", "upstream_error", 0),
        ("support", "ok", 900),
        ("search", "ok", 50),
    ] {
        let id = next();
        l.open_request(&opening(&id, pipeline, "m1", app))
            .await
            .unwrap();
        l.settle(&id, &settled(status, cost, "m1")).await.unwrap();
    }
    let id = next();
    l.record_rejected(
        &opening(&id, "search", "m1", None),
        "invalid",
        "invalid_request",
    )
    .await
    .unwrap();
    // A settle that could not be recorded in full.
    let id = next();
    l.open_request(&opening(&id, "support", "m1", ci))
        .await
        .unwrap();
    l.settle_failed(&id).await.unwrap();
    assert!(
        l.claim_alert("global", &money::utc_day(DAY2_MS), 500_000)
            .await
            .unwrap()
    );

    // Absurd usage twice in one group: the totals stop at the largest
    // integer, and neither settlement fails.
    l.set_clock(Some(DAY3_MS));
    for _ in 0..2 {
        let id = next();
        l.open_request(&opening(&id, "support", "m1", None))
            .await
            .unwrap();
        let absurd = Settlement {
            prompt_tokens: u64::MAX,
            completion_tokens: u64::MAX,
            cost_micros: i64::MAX,
            ..settled("ok", 0, "m1")
        };
        l.settle(&id, &absurd).await.unwrap();
    }
    l.set_clock(None);
}

async fn check(l: Arc<Ledger>) {
    scenario(&l).await;
    let (d1, d2, d3) = (
        money::utc_day(DAY1_MS),
        money::utc_day(DAY2_MS),
        money::utc_day(DAY3_MS),
    );
    let rows = l.rows_since(i64::MIN).await.unwrap();
    assert_eq!(rows.len(), 16);
    let day3 = l.usage(&d3, &d3, UsageBy::Pipeline).await.unwrap();
    assert_eq!(day3.len(), 1, "{day3:?}");
    assert_eq!(day3[0].requests, 2);
    assert_eq!(
        (day3[0].prompt_tokens, day3[0].completion_tokens),
        (i64::MAX, i64::MAX)
    );
    assert_eq!(
        day3[0],
        console::usage_of_rows(&rows, &d3, &d3, UsageBy::Pipeline)[0]
    );

    // Usage: the stored sums equal the sums over the rows, every grouping.
    for by in [
        UsageBy::Total,
        UsageBy::Pipeline,
        UsageBy::Model,
        UsageBy::Key,
        UsageBy::Team,
    ] {
        let stored = l.usage(&d1, &d2, by).await.unwrap();
        assert_eq!(
            stored,
            console::usage_of_rows(&rows, &d1, &d2, by),
            "{by:?}"
        );
        // One day alone.
        let day2 = l.usage(&d2, &d2, by).await.unwrap();
        assert!(day2.iter().all(|c| c.day == d2), "{by:?}");
        assert_eq!(
            day2,
            console::usage_of_rows(&rows, &d2, &d2, by),
            "{by:?} of day 2"
        );
    }
    // Hand-checked: day 1 holds 7 rows, 3 of them errors (timeout,
    // budget_rejected; the pending one is not).
    let total = l.usage(&d1, &d1, UsageBy::Total).await.unwrap();
    assert_eq!((total[0].requests, total[0].errors), (7, 2), "{total:?}");
    assert_eq!(total[0].cost_micros, 300 + 7 + 500 + 100 + 250);
    assert_eq!(total[0].usage_anomalies, 1);
    let models = l.usage(&d1, &d1, UsageBy::Model).await.unwrap();
    assert!(
        models
            .iter()
            .any(|c| c.key == "prov/m2-2025" && c.requests == 1)
    );
    assert!(!models.iter().any(|c| c.key == "prov/m2"), "{models:?}");

    // The same totals as `sluice usage` over the same rows.
    for (by, group) in [
        (UsageBy::Pipeline, GroupBy::Pipeline),
        (UsageBy::Model, GroupBy::Model),
        (UsageBy::Key, GroupBy::Key),
        (UsageBy::Team, GroupBy::Team),
    ] {
        let mut sums: BTreeMap<String, (u64, u64, i64, i64, i64)> = BTreeMap::new();
        for c in l.usage(&d1, &d3, by).await.unwrap() {
            let s = sums.entry(c.key).or_default();
            s.0 += c.requests as u64;
            s.1 += c.errors as u64;
            s.2 = s.2.saturating_add(c.prompt_tokens);
            s.3 = s.3.saturating_add(c.completion_tokens);
            s.4 = s.4.saturating_add(c.cost_micros);
        }
        let usage: BTreeMap<String, (u64, u64, i64, i64, i64)> = report::summarize(&rows, group)
            .into_iter()
            .map(|g| {
                (
                    g.key,
                    (
                        g.requests,
                        g.errors,
                        g.prompt_tokens,
                        g.completion_tokens,
                        g.cost_micros,
                    ),
                )
            })
            .collect();
        assert_eq!(sums, usage, "{by:?}");
    }

    // Listing: newest first, filtered, in pages of 3 through rows that
    // share their millisecond (the clock was fixed).
    for filter in [
        RequestFilter::default(),
        RequestFilter {
            pipeline: Some("support".into()),
            ..RequestFilter::default()
        },
        RequestFilter {
            status: Some("ok".into()),
            ..RequestFilter::default()
        },
        RequestFilter {
            model: Some("m1".into()),
            api_key: Some("app".into()),
            ..RequestFilter::default()
        },
        RequestFilter {
            since_ms: Some(DAY2_MS),
            ..RequestFilter::default()
        },
    ] {
        let all = console::filter_rows(
            rows.clone(),
            &RequestFilter {
                limit: 100,
                ..filter.clone()
            },
        );
        assert!(!all.is_empty(), "{filter:?}");
        let mut paged = Vec::new();
        let mut before: Option<Cursor> = None;
        loop {
            let page = l
                .requests(&RequestFilter {
                    before: before.clone(),
                    limit: 3,
                    ..filter.clone()
                })
                .await
                .unwrap();
            before = page.last().map(Cursor::of);
            let last = page.len() < 3;
            paged.extend(page);
            if last {
                break;
            }
        }
        let ids = |v: &[report::Row]| v.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&paged), ids(&all), "{filter:?}");
    }
    let support = l
        .requests(&RequestFilter {
            pipeline: Some("support".into()),
            limit: 100,
            ..RequestFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(support.len(), 10);
    assert!(support.iter().all(|r| r.pipeline == "support"));
    assert!(support[0].started_at_ms > support[9].started_at_ms);

    let alerts = l.alerts(&d2).await.unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        (alerts[0].scope.as_str(), alerts[0].threshold_ppm),
        ("global", 500_000)
    );
    assert!(l.alerts(&d1).await.unwrap().is_empty());

    // First-token times of the latest requests: the ok ones of days 2 and 3.
    let ttft = l.ttfts(DAY2_MS, 100).await.unwrap();
    assert_eq!(ttft, vec![12; 6]);
    assert_eq!(l.ttfts(DAY2_MS, 3).await.unwrap().len(), 3);
}

#[tokio::test]
async fn console_reads_in_memory() {
    check(Ledger::open("memory").await.unwrap()).await;
}

#[tokio::test]
async fn console_reads_on_sqlite_in_memory() {
    check(Ledger::open("sqlite::memory:").await.unwrap()).await;
}

#[tokio::test]
async fn console_reads_on_a_sqlite_file() {
    let dir = std::env::temp_dir().join(format!("sluice-console-{}", common::pg::uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite:{}", dir.join("ledger.db").display());
    check(Ledger::open(&url).await.unwrap()).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn console_reads_on_postgres() {
    let Some((admin_url, url, name)) = common::pg::fresh_database().await else {
        return;
    };
    check(Ledger::open(&url).await.unwrap()).await;
    common::pg::drop_database(&admin_url, &name).await;
}
