//! The Postgres backend (through sqlx): the statements of `store.rs`
//! with their placeholders numbered, each operation one transaction where
//! it takes several statements. Migrations are embedded from
//! `engine/migrations/postgres`.

use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Row};

use super::console;
use super::report::Row as ReportRow;
use super::store::*;
use super::{Admit, LedgerError, Opening, Settled, Settlement, Spend, period, rate};

/// `?` -> `$1, $2, ...` for Postgres. Every statement is a constant of
/// `store.rs`; values only ever travel as bound parameters.
fn pg(sql: &str) -> AssertSqlSafe<String> {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    AssertSqlSafe(out)
}

macro_rules! report_row {
    ($r:expr) => {{
        let r = $r;
        ReportRow {
            id: r.try_get("id")?,
            started_at_ms: r.try_get("started_at_ms")?,
            ended_at_ms: r.try_get("ended_at_ms")?,
            day: r.try_get("day")?,
            pipeline: r.try_get("pipeline")?,
            provider: r.try_get("provider")?,
            model: r.try_get("model")?,
            status: r.try_get("status")?,
            prompt_tokens: r.try_get("prompt_tokens")?,
            completion_tokens: r.try_get("completion_tokens")?,
            estimated: r.try_get::<i64, _>("estimated")? != 0,
            reserved_micros: r.try_get("reserved_micros")?,
            cost_micros: r.try_get("cost_micros")?,
            ttft_ms: r.try_get("ttft_ms")?,
            duration_ms: r.try_get("duration_ms")?,
            tool_calls: r.try_get("tool_calls")?,
            error_code: r.try_get("error_code")?,
            request_id: r.try_get("request_id")?,
            usage_anomaly: r.try_get("usage_anomaly")?,
            cache_read_tokens: r.try_get("cache_read_tokens")?,
            cache_write_tokens: r.try_get("cache_write_tokens")?,
            api_key: r.try_get("api_key")?,
            team: r.try_get("team")?,
            cache_write_1h_tokens: r.try_get("cache_write_1h_tokens")?,
        }
    }};
}

pub(super) async fn heartbeat(pool: &PgPool, instance: &str, now: i64) -> Result<(), LedgerError> {
    sqlx::query(pg(UPSERT_INSTANCE))
        .bind(instance)
        .bind(now)
        .bind(this_host())
        .bind(i64::from(std::process::id()))
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn recover(pool: &PgPool, me: &str, now: i64) -> Result<u64, LedgerError> {
    let mut tx = pool.begin().await?;
    let mut instances = Vec::new();
    for r in sqlx::query(pg(SELECT_INSTANCES))
        .fetch_all(&mut *tx)
        .await?
    {
        instances.push(Instance {
            id: r.try_get("id")?,
            last_seen_ms: r.try_get("last_seen_ms")?,
            host: r.try_get("host")?,
            pid: r.try_get("pid")?,
        });
    }
    let alive = alive_instances(me, now, &instances);
    let pending = sqlx::query(pg(SELECT_PENDING)).fetch_all(&mut *tx).await?;
    let mut count = 0;
    for r in pending {
        let instance: String = r.try_get("instance")?;
        if alive.contains(&instance) {
            continue;
        }
        count += 1;
        let id: String = r.try_get("id")?;
        let day: String = r.try_get("day")?;
        let reserved: i64 = r.try_get("reserved_micros")?;
        let scopes: String = r.try_get("budget_scopes")?;
        sqlx::query(pg(INTERRUPT_REQUEST))
            .bind("interrupted")
            .bind("interrupted")
            .bind(now)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        for scope in scopes.split(',').filter(|s| !s.is_empty()) {
            sqlx::query(pg(SPEND_RESERVATION))
                .bind(reserved)
                .bind(reserved)
                .bind(reserved)
                .bind(scope)
                .bind(period(scope, &day))
                .execute(&mut *tx)
                .await?;
        }
    }
    for i in instances.iter().filter(|i| !alive.contains(&i.id)) {
        sqlx::query(pg(DELETE_INSTANCE))
            .bind(&i.id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(count)
}

pub(super) async fn interrupt_pending_of(
    pool: &PgPool,
    instance: &str,
    now: i64,
) -> Result<u64, LedgerError> {
    let ids: Vec<String> = sqlx::query_scalar(pg(SELECT_PENDING_OF))
        .bind(instance)
        .fetch_all(pool)
        .await?;
    let mut count = 0;
    for id in ids {
        if Box::pin(end_pending(pool, &id, "interrupted", now)).await? {
            count += 1;
        }
    }
    Ok(count)
}

pub(super) async fn rows_since(
    pool: &PgPool,
    since_ms: i64,
) -> Result<Vec<ReportRow>, LedgerError> {
    let rows = sqlx::query(pg(&select_rows(
        "started_at_ms >= ? ORDER BY started_at_ms",
    )))
    .bind(since_ms)
    .fetch_all(pool)
    .await?;
    report_rows(&rows)
}

pub(super) async fn rows_of(
    pool: &PgPool,
    request_id: &str,
) -> Result<Vec<ReportRow>, LedgerError> {
    let rows = sqlx::query(pg(&select_rows(OF_REQUEST_ID)))
        .bind(request_id)
        .fetch_all(pool)
        .await?;
    report_rows(&rows)
}

/// `requests` rows selected with `select_rows`, as report rows.
fn report_rows(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<ReportRow>, LedgerError> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(report_row!(r));
    }
    Ok(out)
}

/// The conditional reservation of `o` on `scope` for `day`: rows changed.
async fn reserve(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    o: &Opening,
    scope: &super::Scope,
    day: &str,
) -> Result<u64, LedgerError> {
    Ok(sqlx::query(pg(RESERVE))
        .bind(o.reserve_micros)
        .bind(&scope.key)
        .bind(day)
        .bind(o.reserve_micros)
        .bind(scope.limit_micros)
        .execute(&mut **tx)
        .await?
        .rows_affected())
}

pub(super) async fn open(
    pool: &PgPool,
    instance: &str,
    o: &Opening,
    now: i64,
    day: &str,
) -> Result<Admit, LedgerError> {
    let mut tx = pool.begin().await?;
    // Rate limits first: a request they refuse reserves nothing. The row
    // is locked until the commit, so instances take turns on a bucket.
    for charge in &o.rates {
        let locked = sqlx::query(pg(SELECT_BUCKET_LOCKED))
            .bind(&charge.bucket)
            .fetch_optional(&mut *tx)
            .await?;
        let r = match locked {
            Some(r) => r,
            None => {
                // The first request of this bucket (or one racing another
                // instance's first, which the insert waits for).
                sqlx::query(pg(INSERT_BUCKET))
                    .bind(&charge.bucket)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(pg(SELECT_BUCKET_LOCKED))
                    .bind(&charge.bucket)
                    .fetch_one(&mut *tx)
                    .await?
            }
        };
        let state = rate::BucketState {
            fill: r.try_get(0)?,
            updated_ms: r.try_get(1)?,
        };
        match rate::take(state, charge, now) {
            (Some(next), _) => {
                sqlx::query(pg(UPDATE_BUCKET))
                    .bind(next.fill)
                    .bind(next.updated_ms)
                    .bind(&charge.bucket)
                    .execute(&mut *tx)
                    .await?;
            }
            (None, standing) => {
                tx.rollback().await?;
                return Ok(Admit::RateLimited {
                    bucket: charge.bucket.clone(),
                    standing,
                });
            }
        }
    }
    for scope in &o.scopes {
        let day = period(&scope.key, day);
        // The period's row is made only when the reservation found none
        // (or could not afford it); then it is tried once more, which
        // also sees a row another instance has just committed.
        let mut done = reserve(&mut tx, o, scope, day).await?;
        if done == 0 {
            sqlx::query(pg(INSERT_BUDGET_DAY))
                .bind(&scope.key)
                .bind(day)
                .execute(&mut *tx)
                .await?;
            done = reserve(&mut tx, o, scope, day).await?;
        }
        if done == 0 {
            let spent: i64 = sqlx::query(pg(SELECT_SPENT))
                .bind(&scope.key)
                .bind(day)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            tx.rollback().await?;
            return Ok(Admit::Exhausted {
                scope: scope.key.clone(),
                limit_micros: scope.limit_micros,
                spent_micros: spent,
            });
        }
    }
    let (rate_buckets, rate_tokens) = token_buckets(o);
    sqlx::query(pg(INSERT_REQUEST))
        .bind(&o.id)
        .bind(&o.request_id)
        .bind(instance)
        .bind(now)
        .bind(day)
        .bind(&o.pipeline)
        .bind(&o.provider)
        .bind(&o.model)
        .bind(if o.scopes.is_empty() {
            0
        } else {
            o.reserve_micros
        })
        .bind(scope_list(o))
        .bind(&o.api_key)
        .bind(&o.team)
        .bind(&rate_buckets)
        .bind(rate_tokens)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Admit::Admitted)
}

pub(super) async fn record_rejected(
    pool: &PgPool,
    instance: &str,
    o: &Opening,
    now: i64,
    day: &str,
    status: &str,
    error_code: &str,
) -> Result<(), LedgerError> {
    sqlx::query(pg(INSERT_REJECTED))
        .bind(&o.id)
        .bind(&o.request_id)
        .bind(instance)
        .bind(now)
        .bind(now)
        .bind(day)
        .bind(&o.pipeline)
        .bind(&o.provider)
        .bind(&o.model)
        .bind(status)
        .bind(error_code)
        .bind(&o.api_key)
        .bind(&o.team)
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn settle(
    pool: &PgPool,
    id: &str,
    s: &Settlement,
    now: i64,
) -> Result<Settled, LedgerError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(pg(SELECT_TO_SETTLE))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(Settled::default());
    };
    let status: String = row.try_get("status")?;
    if status != "pending" {
        // Already settled (or recovered as interrupted): settling
        // twice would count the money twice.
        tx.rollback().await?;
        return Ok(Settled::default());
    }
    let day: String = row.try_get("day")?;
    let reserved: i64 = row.try_get("reserved_micros")?;
    let scopes: String = row.try_get("budget_scopes")?;
    let buckets: String = row.try_get("rate_buckets")?;
    let tokens: i64 = row.try_get("rate_tokens")?;
    let (charged, anomaly) = charge(s, reserved, !scopes.is_empty());
    let back = token_refund(s, tokens);
    for bucket in buckets.split(',').filter(|b| !b.is_empty() && back > 0) {
        sqlx::query(pg(REFUND_BUCKET))
            .bind(back)
            .bind(back)
            .bind(bucket)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(pg(SETTLE_REQUEST))
        .bind(s.status)
        .bind(now)
        .bind(&s.provider)
        .bind(&s.model)
        .bind(stored_tokens(s.prompt_tokens))
        .bind(stored_tokens(s.completion_tokens))
        .bind(i64::from(s.estimated))
        .bind(charged)
        .bind(s.ttft_ms)
        .bind(s.duration_ms)
        .bind(i64::from(s.tool_calls))
        .bind(s.error_code)
        .bind(anomaly)
        .bind(stored_tokens(s.cache_read_tokens))
        .bind(stored_tokens(s.cache_write_tokens))
        .bind(stored_tokens(s.cache_write_1h_tokens))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let mut spends = Vec::new();
    for scope in scopes.split(',').filter(|s| !s.is_empty()) {
        let r = sqlx::query(pg(SETTLE_BUDGET))
            .bind(reserved)
            .bind(charged)
            .bind(charged)
            .bind(scope)
            .bind(period(scope, &day))
            .fetch_one(&mut *tx)
            .await?;
        spends.push((
            scope.to_string(),
            Spend {
                spent_micros: r.try_get(0)?,
                reserved_micros: r.try_get(1)?,
            },
        ));
    }
    tx.commit().await?;
    Ok(Settled { day, spends })
}

/// Ends a pending row without its usage (`interrupted`, `settle_failed`):
/// its reservation becomes its cost. False when it was not pending.
pub(super) async fn end_pending(
    pool: &PgPool,
    id: &str,
    status: &str,
    now: i64,
) -> Result<bool, LedgerError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(pg(SELECT_TO_SETTLE))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(false);
    };
    let day: String = row.try_get("day")?;
    let reserved: i64 = row.try_get("reserved_micros")?;
    let scopes: String = row.try_get("budget_scopes")?;
    let done = sqlx::query(pg(INTERRUPT_REQUEST))
        .bind(status)
        .bind(status)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if done == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    for scope in scopes.split(',').filter(|s| !s.is_empty()) {
        sqlx::query(pg(SPEND_RESERVATION))
            .bind(reserved)
            .bind(reserved)
            .bind(reserved)
            .bind(scope)
            .bind(period(scope, &day))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(true)
}

pub(super) async fn claim_alert(
    pool: &PgPool,
    scope: &str,
    day: &str,
    ppm: i64,
    now: i64,
) -> Result<bool, LedgerError> {
    let n = sqlx::query(pg(CLAIM_ALERT))
        .bind(scope)
        .bind(day)
        .bind(ppm)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(n == 1)
}

pub(super) async fn mark_alert_delivered(
    pool: &PgPool,
    scope: &str,
    day: &str,
    ppm: i64,
) -> Result<(), LedgerError> {
    sqlx::query(pg(ALERT_DELIVERED))
        .bind(scope)
        .bind(day)
        .bind(ppm)
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn spend(pool: &PgPool, scope: &str, day: &str) -> Result<Spend, LedgerError> {
    let r = sqlx::query(pg(SELECT_BUDGET))
        .bind(scope)
        .bind(day)
        .fetch_optional(pool)
        .await?;
    Ok(match r {
        Some(r) => Spend {
            spent_micros: r.try_get(0)?,
            reserved_micros: r.try_get(1)?,
        },
        None => Spend {
            spent_micros: 0,
            reserved_micros: 0,
        },
    })
}

/// The console's reads (see `console.rs`).
pub(super) async fn usage(
    pool: &PgPool,
    from: &str,
    to: &str,
    by: console::UsageBy,
) -> Result<Vec<console::UsageCell>, LedgerError> {
    let rows = sqlx::query(pg(&console::usage_sql(by)))
        .bind(from)
        .bind(to)
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await?;
    let mut lines = Vec::with_capacity(rows.len());
    for r in &rows {
        lines.push((
            r.try_get(0)?,
            r.try_get(1)?,
            [
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
                r.try_get(5)?,
                r.try_get(6)?,
                r.try_get::<i64, _>(7)?,
            ],
        ));
    }
    Ok(console::aggregate(lines))
}

pub(super) async fn requests(
    pool: &PgPool,
    f: &console::RequestFilter,
) -> Result<Vec<ReportRow>, LedgerError> {
    let (filter, params) = console::filter_sql(f);
    let sql = select_rows(&filter);
    let mut q = sqlx::query(pg(&sql));
    for p in params {
        q = match p {
            console::Param::Int(v) => q.bind(v),
            console::Param::Text(v) => q.bind(v),
        };
    }
    report_rows(&q.fetch_all(pool).await?)
}

pub(super) async fn alerts(
    pool: &PgPool,
    day: &str,
    month: &str,
) -> Result<Vec<console::AlertFired>, LedgerError> {
    let rows = sqlx::query(pg(console::ALERTS_SQL))
        .bind(day)
        .bind(month)
        .fetch_all(pool)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(console::AlertFired {
            scope: r.try_get(0)?,
            period: r.try_get(1)?,
            threshold_ppm: r.try_get(2)?,
            fired_at_ms: r.try_get(3)?,
            delivered: r.try_get::<i64, _>(4)? != 0,
        });
    }
    Ok(out)
}

pub(super) async fn ttfts(
    pool: &PgPool,
    since_ms: i64,
    limit: i64,
) -> Result<Vec<i64>, LedgerError> {
    let rows = sqlx::query(pg(console::TTFT_SQL))
        .bind(since_ms)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| r.try_get(0).map_err(LedgerError::from))
        .collect()
}
