//! Tests of the ledger on SQLite (in memory and on disk).

use super::*;

fn opening(id: &str, reserve: Micros, scopes: &[(&str, Micros)]) -> Opening {
    Opening {
        id: id.into(),
        request_id: format!("req-{id}"),
        pipeline: "p".into(),
        provider: "prov".into(),
        model: "m".into(),
        api_key: None,
        team: None,
        rates: Vec::new(),
        reserve_micros: reserve,
        scopes: scopes
            .iter()
            .map(|(k, d)| Scope {
                key: (*k).into(),
                limit_micros: *d,
            })
            .collect(),
    }
}

fn settlement(cost: Micros) -> Settlement {
    Settlement {
        status: "ok",
        prompt_tokens: 10,
        completion_tokens: 20,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        cache_write_1h_tokens: 0,
        estimated: false,
        cost_micros: cost,
        ttft_ms: Some(5),
        duration_ms: 50,
        tool_calls: 0,
        error_code: None,
        provider: "prov".into(),
        model: "m".into(),
        usage_anomaly: None,
    }
}

#[tokio::test]
async fn reserve_settle_and_reject_on_one_day() {
    let l = Ledger::open("sqlite::memory:").await.unwrap();
    let day = money::utc_day(money::now_ms());
    let scopes = [("global", 100), ("pipeline:p", 60)];
    assert_eq!(
        l.open_request(&opening("a", 50, &scopes)).await.unwrap(),
        Admit::Admitted
    );
    // 50 reserved of 60 on the pipeline: 20 more does not fit.
    match l.open_request(&opening("b", 20, &scopes)).await.unwrap() {
        Admit::Exhausted { scope, .. } => assert_eq!(scope, "pipeline:p"),
        other => panic!("{other:?}"),
    }
    l.record_rejected(
        &opening("b", 20, &scopes),
        "budget_rejected",
        "budget_exhausted",
    )
    .await
    .unwrap();
    // Nothing of the rejected reservation stayed behind, on either scope.
    assert_eq!(
        l.spend("global", &day).await.unwrap(),
        Spend {
            spent_micros: 0,
            reserved_micros: 50
        }
    );
    let settled = l.settle("a", &settlement(12)).await.unwrap();
    assert_eq!(settled.day, day);
    assert_eq!(
        settled.spends[1],
        (
            "pipeline:p".into(),
            Spend {
                spent_micros: 12,
                reserved_micros: 0
            }
        )
    );
    // Settling twice counts nothing twice.
    assert!(
        l.settle("a", &settlement(12))
            .await
            .unwrap()
            .spends
            .is_empty()
    );
    assert_eq!(
        l.open_request(&opening("c", 48, &scopes)).await.unwrap(),
        Admit::Admitted
    );
    let a = l.row("req-a").await.unwrap().unwrap();
    assert_eq!(
        (a.status.as_str(), a.cost_micros, a.prompt_tokens),
        ("ok", 12, 10)
    );
    let b = l.row("req-b").await.unwrap().unwrap();
    assert_eq!(b.status, "budget_rejected");
    assert_eq!(b.error_code.as_deref(), Some("budget_exhausted"));
}

#[tokio::test]
async fn rows_left_pending_by_a_dead_instance_are_interrupted_and_count_as_spent() {
    let dir = std::env::temp_dir().join(format!("sluice-ledger-{}", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite://{}/ledger.db", dir.display());
    let day = money::utc_day(money::now_ms());
    {
        let dead = Ledger::open(&url).await.unwrap();
        dead.open_request(&opening("x", 30, &[("global", 100)]))
            .await
            .unwrap();
        dead.open_request(&opening("y", 0, &[])).await.unwrap();
        dead.close().await;
    }
    let l = Ledger::open(&url).await.unwrap();
    // The dead instance was seen just now: its rows are not orphans yet.
    assert_eq!(l.recover_interrupted().await.unwrap(), 0);
    // Make it look long gone.
    if let store::Store::Sqlite(s) = &l.store {
        s.execute(
            "UPDATE instances SET last_seen_ms = 0 WHERE id <> ?",
            l.instance.clone(),
        )
        .await
        .unwrap();
    }
    assert_eq!(l.recover_interrupted().await.unwrap(), 2);
    let x = l.row("req-x").await.unwrap().unwrap();
    assert_eq!((x.status.as_str(), x.cost_micros), ("interrupted", 30));
    assert_eq!(
        l.spend("global", &day).await.unwrap(),
        Spend {
            spent_micros: 30,
            reserved_micros: 0
        }
    );
    assert_eq!(l.recover_interrupted().await.unwrap(), 0);
    // A late settle of a recovered row changes nothing.
    assert!(
        l.settle("x", &settlement(1))
            .await
            .unwrap()
            .spends
            .is_empty()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_alert_threshold_is_claimed_once_per_scope_and_day() {
    let l = Ledger::open("sqlite::memory:").await.unwrap();
    assert!(
        l.claim_alert("global", "2026-11-27", 500_000)
            .await
            .unwrap()
    );
    assert!(
        !l.claim_alert("global", "2026-11-27", 500_000)
            .await
            .unwrap()
    );
    assert!(
        l.claim_alert("global", "2026-11-28", 500_000)
            .await
            .unwrap()
    );
    assert!(
        l.claim_alert("pipeline:p", "2026-11-27", 500_000)
            .await
            .unwrap()
    );
}

mod interleavings {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Reserve(Micros),
        /// Settle the k-th open request at this fraction (per mille) of its
        /// reservation: past 1000, more than it reserved (a provider's
        /// absurd usage), which must be charged at the reservation.
        Settle(usize, u16),
        /// Settle the k-th open request at `i64::MAX`.
        SettleAbsurd(usize),
        /// Release the k-th open request: it failed, nothing was spent.
        Release(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                (1i64..400).prop_map(Op::Reserve),
                (0usize..8, 0u16..=3000).prop_map(|(k, f)| Op::Settle(k, f)),
                (0usize..8).prop_map(Op::SettleAbsurd),
                (0usize..8).prop_map(Op::Release),
            ],
            1..60,
        )
    }

    /// Runs `ops` against `url` and checks after every step that spent +
    /// reserved never exceeds the budget and matches the model.
    async fn check(url: &str, ops: Vec<Op>) -> Result<(), TestCaseError> {
        const BUDGET: Micros = 1000;
        let l = Ledger::open(url).await.unwrap();
        let day = money::utc_day(money::now_ms());
        let mut open: Vec<(String, Micros)> = Vec::new();
        let (mut spent, mut next) = (0, 0);
        for op in ops {
            match op {
                Op::Reserve(r) => {
                    next += 1;
                    let id = format!("r{next}");
                    let fits = spent + open.iter().map(|(_, r)| r).sum::<Micros>() + r <= BUDGET;
                    let admit = l
                        .open_request(&opening(&id, r, &[("global", BUDGET)]))
                        .await
                        .unwrap();
                    prop_assert_eq!(admit == Admit::Admitted, fits);
                    if fits {
                        open.push((id, r));
                    }
                }
                Op::Settle(k, _) | Op::SettleAbsurd(k) | Op::Release(k) if k < open.len() => {
                    let (id, r) = open.remove(k);
                    let cost = match op {
                        Op::Settle(_, f) => r * Micros::from(f) / 1000,
                        Op::SettleAbsurd(_) => Micros::MAX,
                        _ => 0,
                    };
                    l.settle(&id, &settlement(cost)).await.unwrap();
                    spent += cost.min(r);
                }
                _ => {}
            }
            let s = l.spend("global", &day).await.unwrap();
            prop_assert!(s.spent_micros + s.reserved_micros <= BUDGET, "{:?}", s);
            prop_assert_eq!(s.spent_micros, spent);
            prop_assert_eq!(
                s.reserved_micros,
                open.iter().map(|(_, r)| r).sum::<Micros>()
            );
        }
        l.close().await;
        Ok(())
    }

    fn run(url: &'static str, ops: Vec<Op>) -> Result<(), TestCaseError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(check(url, ops))
    }

    proptest! {
        #[test]
        fn memory_never_spends_past_the_budget(ops in ops()) {
            run("memory", ops)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn sqlite_never_spends_past_the_budget(ops in ops()) {
            run("sqlite::memory:", ops)?;
        }
    }
}

/// The SQLite writer groups waiting operations into one transaction; the
/// grouping must not change any answer.
mod group_commit {
    use super::*;

    fn temp_url() -> (std::path::PathBuf, String) {
        let dir =
            std::env::temp_dir().join(format!("sluice-ledger-{}", uuid::Uuid::new_v4().simple()));
        let url = format!("sqlite:{}/ledger.db", dir.display());
        (dir, url)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_opens_share_commits_and_a_refused_one_leaves_nothing_behind() {
        let (dir, url) = temp_url();
        let l = Ledger::open(&url).await.unwrap();
        let day = money::utc_day(money::now_ms());
        // "tight" affords 10 reservations of 10; "wide" affords them all.
        // Openings on both scopes that "tight" refuses must leave nothing
        // reserved on "wide" either, although their batch commits.
        let both = [("wide", 1_000_000), ("tight", 100)];
        let wide = [("wide", 1_000_000)];
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let l = l.clone();
                tokio::spawn(async move {
                    let o = if i % 2 == 0 {
                        opening(&format!("r{i}"), 10, &both)
                    } else {
                        opening(&format!("r{i}"), 10, &wide)
                    };
                    l.open_request(&o).await.unwrap()
                })
            })
            .collect();
        let mut admitted_both = 0;
        let mut admitted_wide = 0;
        for (i, t) in tasks.into_iter().enumerate() {
            if t.await.unwrap() == Admit::Admitted {
                if i % 2 == 0 {
                    admitted_both += 1;
                } else {
                    admitted_wide += 1;
                }
            }
        }
        assert_eq!((admitted_both, admitted_wide), (10, 100));
        assert_eq!(
            l.spend("wide", &day).await.unwrap().reserved_micros,
            10 * (admitted_both + admitted_wide)
        );
        assert_eq!(l.spend("tight", &day).await.unwrap().reserved_micros, 100);
        let store::Store::Sqlite(s) = &l.store else {
            panic!("not sqlite")
        };
        let batches = s.batches();
        eprintln!("200 openings (+ heartbeat) in {batches} transactions");
        assert!(batches < 150, "{batches} transactions: nothing was grouped");
        l.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn an_answer_means_committed_for_another_connection() {
        let (dir, url) = temp_url();
        let l = Ledger::open(&url).await.unwrap();
        l.open_request(&opening("seen", 5, &[("global", 100)]))
            .await
            .unwrap();
        // Another connection (another process, say) sees the row at once.
        let other = rusqlite::Connection::open(dir.join("ledger.db")).unwrap();
        let (status, reserved): (String, i64) = other
            .query_row(
                "SELECT status, reserved_micros FROM requests WHERE id = 'seen'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((status.as_str(), reserved), ("pending", 5));
        l.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_operation_rolls_back_alone() {
        let (dir, url) = temp_url();
        let l = Ledger::open(&url).await.unwrap();
        let day = money::utc_day(money::now_ms());
        let scopes = [("global", 1_000)];
        l.open_request(&opening("dup", 7, &scopes)).await.unwrap();
        // The same id again, among others in flight: its reservation is
        // made, then its insert fails; only its own writes roll back.
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let l = l.clone();
                let id = if i == 10 {
                    "dup".to_string()
                } else {
                    format!("ok{i}")
                };
                tokio::spawn(
                    async move { l.open_request(&opening(&id, 7, &[("global", 1_000)])).await },
                )
            })
            .collect();
        let mut failed = 0;
        for t in tasks {
            if let Err(e) = t.await.unwrap() {
                assert!(e.to_string().contains("UNIQUE"), "{e}");
                failed += 1;
            }
        }
        assert_eq!(failed, 1);
        assert_eq!(
            l.spend("global", &day).await.unwrap().reserved_micros,
            7 * 20
        );
        assert_eq!(l.rows_since(0).await.unwrap().len(), 20);
        l.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn the_checkpointer_moves_the_wal_into_the_database_file() {
        let (dir, url) = temp_url();
        let l = Ledger::open(&url).await.unwrap();
        let db = dir.join("ledger.db");
        let before = std::fs::metadata(&db).unwrap().len();
        // One transaction each: enough for several checkpoints.
        for i in 0..300 {
            l.open_request(&opening(&format!("c{i}"), 0, &[]))
                .await
                .unwrap();
        }
        // The writer never checkpoints itself; the checkpointer thread does,
        // soon after it is asked.
        let mut after = before;
        for _ in 0..500 {
            after = std::fs::metadata(&db).unwrap().len();
            if after > before + 8 * 4096 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            after > before + 8 * 4096,
            "database file {before} -> {after} bytes: nothing was checkpointed"
        );
        l.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_ledger_made_by_sqlx_migrations_opens_without_migrating_again() {
        let (dir, url) = temp_url();
        std::fs::create_dir_all(&dir).unwrap();
        {
            let c = rusqlite::Connection::open(dir.join("ledger.db")).unwrap();
            c.execute_batch(include_str!("../../migrations/sqlite/0001_ledger.sql"))
                .unwrap();
            c.execute_batch(
                "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, success BOOLEAN NOT NULL);
                 INSERT INTO _sqlx_migrations VALUES (1, 1);",
            )
            .unwrap();
        }
        let l = Ledger::open(&url).await.unwrap();
        l.open_request(&opening("old", 1, &[])).await.unwrap();
        assert_eq!(l.rows_since(0).await.unwrap().len(), 1);
        l.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_ledger_from_a_newer_sluice_is_refused_by_name() {
        let (dir, url) = temp_url();
        std::fs::create_dir_all(&dir).unwrap();
        let l = Ledger::open(&url).await.unwrap();
        l.close().await;
        {
            let c = rusqlite::Connection::open(dir.join("ledger.db")).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = Ledger::open(&url).await.err().expect("refused");
        let msg = err.to_string();
        assert!(
            msg.starts_with("the ledger's schema is at version 99, newer than this Sluice knows")
                && msg.contains("restore the ledger from a backup"),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
