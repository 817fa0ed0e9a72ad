//! Tests of the ledger on SQLite (in memory and on disk).

use super::*;

fn opening(id: &str, reserve: Micros, scopes: &[(&str, Micros)]) -> Opening {
    Opening {
        id: id.into(),
        pipeline: "p".into(),
        provider: "prov".into(),
        model: "m".into(),
        reserve_micros: reserve,
        scopes: scopes
            .iter()
            .map(|(k, d)| Scope {
                key: (*k).into(),
                daily_micros: *d,
            })
            .collect(),
    }
}

fn settlement(cost: Micros) -> Settlement {
    Settlement {
        status: "ok",
        prompt_tokens: 10,
        completion_tokens: 20,
        estimated: false,
        cost_micros: cost,
        ttft_ms: Some(5),
        duration_ms: 50,
        tool_calls: 0,
        error_code: None,
        model: "m".into(),
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
    let a = l.row("a").await.unwrap().unwrap();
    assert_eq!(
        (a.status.as_str(), a.cost_micros, a.prompt_tokens),
        ("ok", 12, 10)
    );
    let b = l.row("b").await.unwrap().unwrap();
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
    if let store::Store::Sqlite(pool) = &l.store {
        sqlx::query("UPDATE instances SET last_seen_ms = 0 WHERE id <> ?")
            .bind(&l.instance)
            .execute(pool)
            .await
            .unwrap();
    }
    assert_eq!(l.recover_interrupted().await.unwrap(), 2);
    let x = l.row("x").await.unwrap().unwrap();
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
