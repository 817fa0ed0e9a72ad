//! The ledger at its bounds: amounts at the extremes, repeated request ids,
//! settlements that fail, and a flood of refused requests.

use super::*;

fn temp_url() -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("sluice-ledger-{}", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite:{}/ledger.db", dir.display());
    (dir, url)
}

fn refused(request_id: &str) -> Opening {
    Opening {
        id: new_row_id(),
        request_id: request_id.into(),
        pipeline: "p".into(),
        provider: "prov".into(),
        model: "m".into(),
        api_key: None,
        team: None,
        rates: Vec::new(),
        reserve_micros: 0,
        scopes: Vec::new(),
    }
}

/// 20,000 requests refused before any provider call, recorded by 64 callers
/// at once (so that the writer is never idle, as under a flood): the WAL
/// stays under [`sqlite_file::WAL_LIMIT`] plus one batch (far less than 2 MB),
/// where it grew past 30 MB before, and every refusal is
/// still a row that `sluice usage` counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_requests_keeps_the_wal_bounded() {
    const REQUESTS: usize = 20_000;
    const CALLERS: usize = 64;
    let (dir, url) = temp_url();
    let l = Ledger::open(&url).await.unwrap();
    let wal = dir.join("ledger.db-wal");
    let largest = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..CALLERS {
        let (l, wal, largest) = (l.clone(), wal.clone(), largest.clone());
        tasks.spawn(async move {
            for i in (caller..REQUESTS).step_by(CALLERS) {
                l.record_rejected(
                    &refused(&format!("bad-{i}")),
                    "invalid_request",
                    "invalid_request",
                )
                .await
                .unwrap();
                let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
                largest.fetch_max(size, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let largest = largest.load(std::sync::atomic::Ordering::Relaxed);
    let bound = sqlite_file::WAL_LIMIT + 2 * 1024 * 1024;
    println!("largest WAL seen: {largest} bytes (bound {bound})");
    assert!(
        largest <= bound,
        "the WAL grew to {largest} bytes, past {bound}"
    );
    let rows = l.rows_since(0).await.unwrap();
    assert_eq!(rows.len(), REQUESTS);
    let groups = report::summarize(&rows, report::GroupBy::Pipeline);
    assert_eq!(
        (groups[0].requests, groups[0].errors),
        (REQUESTS as u64, REQUESTS as u64)
    );
    l.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

fn budgeted(row: &str, request_id: &str, reserve: Micros) -> Opening {
    Opening {
        reserve_micros: reserve,
        scopes: vec![Scope {
            key: "global".into(),
            limit_micros: 1_000,
        }],
        ..refused(request_id)
    }
    .with_id(row)
}

impl Opening {
    fn with_id(mut self, id: &str) -> Opening {
        self.id = id.into();
        self
    }
}

fn settlement(tokens: u64, cost: Micros, anomaly: Option<&str>) -> Settlement {
    Settlement {
        status: "ok",
        prompt_tokens: tokens,
        completion_tokens: tokens,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        cache_write_1h_tokens: 0,
        estimated: false,
        cost_micros: cost,
        ttft_ms: Some(1),
        duration_ms: 2,
        tool_calls: 0,
        error_code: None,
        provider: "prov".into(),
        model: "m".into(),
        usage_anomaly: anomaly.map(str::to_string),
    }
}

/// `u64::MAX` tokens and an `i64::MAX` cost settle: the budget is charged
/// the reservation, never past its limit, the row says why, and a request
/// in flight at that moment still settles (its sum once overflowed to a
/// REAL that no read could take).
async fn absurd_usage_settles_within_the_budget(url: &str) {
    let l = Ledger::open(url).await.unwrap();
    let day = money::utc_day(money::now_ms());
    let open = |row, reserve| budgeted(row, "same-id", reserve);
    assert_eq!(
        l.open_request(&open("a", 400)).await.unwrap(),
        Admit::Admitted
    );
    assert_eq!(
        l.open_request(&open("b", 300)).await.unwrap(),
        Admit::Admitted
    );
    // A reservation of i64::MAX is refused, not an error.
    assert!(matches!(
        l.open_request(&open("c", Micros::MAX)).await.unwrap(),
        Admit::Exhausted { .. }
    ));
    let settled = l
        .settle(
            "a",
            &settlement(
                u64::MAX,
                Micros::MAX,
                Some("completion_tokens 18446744073709551615"),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        settled.spends[0].1,
        Spend {
            spent_micros: 400,
            reserved_micros: 300
        }
    );
    let settled = l.settle("b", &settlement(0, 5, None)).await.unwrap();
    assert_eq!(settled.spends[0].1.spent_micros, 405);
    let spend = l.spend("global", &day).await.unwrap();
    assert_eq!((spend.spent_micros, spend.reserved_micros), (405, 0));

    // Both rows under one client id, oldest first; `row` is the latest.
    let rows = l.rows_of("same-id").await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let a = &rows[0];
    assert_eq!((a.prompt_tokens, a.completion_tokens), (i64::MAX, i64::MAX));
    assert_eq!(a.cost_micros, 400);
    let why = a.usage_anomaly.as_deref().unwrap();
    assert!(
        why.contains("18446744073709551615") && why.contains("reservation"),
        "{why}"
    );
    assert_eq!(rows[1].usage_anomaly, None);
    assert_eq!(l.row("same-id").await.unwrap().unwrap().id, "b");

    // `sluice usage` over them: no overflow, no negative.
    let g = report::summarize(&rows, report::GroupBy::Pipeline);
    assert_eq!((g[0].prompt_tokens, g[0].cost_micros), (i64::MAX, 405));
    assert_eq!(g[0].usage_anomalies, 1);
    l.close().await;
}

#[tokio::test]
async fn absurd_usage_settles_within_the_budget_in_memory() {
    absurd_usage_settles_within_the_budget("memory").await;
}

#[tokio::test]
async fn absurd_usage_settles_within_the_budget_on_sqlite() {
    absurd_usage_settles_within_the_budget("sqlite::memory:").await;
}

/// The settlement of last resort, and the one at shutdown: a row left
/// pending is settled at its reservation, once.
async fn no_row_is_left_pending(url: &str) {
    let l = Ledger::open(url).await.unwrap();
    let day = money::utc_day(money::now_ms());
    for (row, reserve) in [("f", 100), ("g", 50), ("h", 25)] {
        l.open_request(&budgeted(row, row, reserve)).await.unwrap();
    }
    assert!(l.settle_failed("f").await.unwrap());
    assert!(!l.settle_failed("f").await.unwrap());
    l.settle("g", &settlement(1, 10, None)).await.unwrap();
    assert_eq!(l.interrupt_own_pending().await.unwrap(), 1);
    assert_eq!(l.interrupt_own_pending().await.unwrap(), 0);
    let status = |r: Option<report::Row>| {
        let r = r.unwrap();
        (r.status, r.error_code, r.cost_micros)
    };
    assert_eq!(
        status(l.row("f").await.unwrap()),
        ("settle_failed".into(), Some("settle_failed".into()), 100)
    );
    assert_eq!(
        status(l.row("h").await.unwrap()),
        ("interrupted".into(), Some("interrupted".into()), 25)
    );
    // A late settle changes nothing.
    assert!(
        l.settle("h", &settlement(1, 1, None))
            .await
            .unwrap()
            .spends
            .is_empty()
    );
    let spend = l.spend("global", &day).await.unwrap();
    assert_eq!((spend.spent_micros, spend.reserved_micros), (135, 0));
    l.close().await;
}

#[tokio::test]
async fn no_row_is_left_pending_in_memory() {
    no_row_is_left_pending("memory").await;
}

#[tokio::test]
async fn no_row_is_left_pending_on_sqlite() {
    no_row_is_left_pending("sqlite::memory:").await;
}

/// A ledger of schema 6 (before the console's totals) gets them from its
/// rows when it opens: two absurd rows in one group saturate instead of
/// failing the migration, the pending row is counted as in flight.
#[tokio::test]
async fn a_ledger_of_schema_six_gets_its_usage_totals_from_its_rows() {
    use super::console::{UsageBy, usage_of_rows};
    let (dir, url) = temp_url();
    std::fs::create_dir_all(&dir).unwrap();
    {
        let c = rusqlite::Connection::open(dir.join("ledger.db")).unwrap();
        for sql in [
            include_str!("../../migrations/sqlite/0001_ledger.sql"),
            include_str!("../../migrations/sqlite/0002_request_id_and_usage_anomaly.sql"),
            include_str!("../../migrations/sqlite/0003_cache_tokens.sql"),
            include_str!("../../migrations/sqlite/0004_keys.sql"),
            include_str!("../../migrations/sqlite/0005_rate_limits.sql"),
            include_str!("../../migrations/sqlite/0006_cache_write_1h_tokens.sql"),
        ] {
            c.execute_batch(sql).unwrap();
        }
        c.execute_batch(
            "PRAGMA user_version = 6;
             INSERT INTO requests (id, instance, started_at_ms, day, pipeline, provider, model, status, prompt_tokens, cost_micros, api_key)
                 VALUES ('a', 'gone', 1, '2026-01-01', 'p', 'x', 'm', 'ok', 9223372036854775807, 5, 'k'),
                        ('b', 'gone', 2, '2026-01-01', 'p', 'x', 'm', 'ok', 9223372036854775807, 7, 'k'),
                        ('c', 'gone', 3, '2026-01-01', 'q', 'x', 'm', 'timeout', -4, 3, NULL),
                        ('d', 'gone', 4, '2026-01-02', 'q', 'x', 'm', 'pending', 0, 0, NULL);",
        )
        .unwrap();
    }
    let l = Ledger::open(&url).await.unwrap();
    let rows = l.rows_since(0).await.unwrap();
    for by in [UsageBy::Total, UsageBy::Pipeline, UsageBy::Key] {
        let stored = l.usage("2026-01-01", "2026-01-02", by).await.unwrap();
        assert_eq!(
            stored,
            usage_of_rows(&rows, "2026-01-01", "2026-01-02", by),
            "{by:?}"
        );
    }
    let p = l
        .usage("2026-01-01", "2026-01-01", UsageBy::Pipeline)
        .await
        .unwrap();
    assert_eq!(
        (p[0].key.as_str(), p[0].requests, p[0].prompt_tokens),
        ("p", 2, i64::MAX)
    );
    assert_eq!(
        (p[1].key.as_str(), p[1].errors, p[1].prompt_tokens),
        ("q", 1, 0)
    );
    l.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A ledger written before rows had their own id (and by the Sluice whose
/// sums overflowed into REALs) opens, keeps its rows under their request
/// ids, and reads again.
#[tokio::test]
async fn a_ledger_of_schema_one_migrates_and_its_overflowed_sums_read_again() {
    let (dir, url) = temp_url();
    std::fs::create_dir_all(&dir).unwrap();
    {
        let c = rusqlite::Connection::open(dir.join("ledger.db")).unwrap();
        c.execute_batch(include_str!("../../migrations/sqlite/0001_ledger.sql"))
            .unwrap();
        c.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO requests (id, instance, started_at_ms, day, pipeline, provider, model, status, prompt_tokens)
                 VALUES ('old', 'gone', 1, '2026-01-01', 'p', 'x', 'm', 'ok', -1);
             INSERT INTO budget_days (scope, day, spent_micros) VALUES ('global', '2026-01-01', 9.3e18);",
        )
        .unwrap();
    }
    let l = Ledger::open(&url).await.unwrap();
    let old = l.row("old").await.unwrap().unwrap();
    assert_eq!((old.id.as_str(), old.request_id.as_str()), ("old", "old"));
    let spend = l.spend("global", "2026-01-01").await.unwrap();
    assert_eq!(spend.spent_micros, i64::MAX);
    let g = report::summarize(&l.rows_since(0).await.unwrap(), report::GroupBy::Pipeline);
    assert_eq!(g[0].prompt_tokens, 0);
    l.close().await;
    let _ = std::fs::remove_dir_all(dir);
}
