//! The ledger's backends, and the SQL they share. Statements are written
//! once with `?` placeholders: SQLite (`sqlite.rs`) runs them as they are,
//! Postgres (here, through sqlx) with the placeholders numbered.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row};

use super::memory::MemStore;
use super::report::Row as ReportRow;
use super::sqlite::SqliteStore;
use super::{Admit, LedgerError, Opening, Settled, Settlement, Spend};

/// An instance not seen for this long is dead; its pending rows are orphans.
pub const INSTANCE_TIMEOUT_MS: i64 = 30_000;

pub(super) const UPSERT_INSTANCE: &str = "INSERT INTO instances (id, last_seen_ms, host, pid) \
     VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms";
pub(super) const SELECT_INSTANCES: &str = "SELECT id, last_seen_ms, host, pid FROM instances";
pub(super) const DELETE_INSTANCE: &str = "DELETE FROM instances WHERE id = ?";
pub(super) const SELECT_PENDING: &str = "SELECT id, instance, day, reserved_micros, budget_scopes \
     FROM requests WHERE status = 'pending'";
/// A pending row ends without its real usage (`interrupted` or
/// `settle_failed`, also its error code): its reservation is its cost.
pub(super) const INTERRUPT_REQUEST: &str = "UPDATE requests SET status = ?, error_code = ?, \
     cost_micros = reserved_micros, ended_at_ms = ? WHERE id = ? AND status = 'pending'";
/// A reservation becomes spend (of its reserved amount, or its real cost):
/// binds the reservation, then the spend twice (see [`SATURATING_SPEND`]).
pub(super) const SPEND_RESERVATION: &str = "UPDATE budget_days SET reserved_micros = \
     reserved_micros - ?, spent_micros = CASE WHEN spent_micros > 9223372036854775807 - ? \
     THEN 9223372036854775807 ELSE spent_micros + ? END WHERE scope = ? AND day = ?";
pub(super) const INSERT_BUDGET_DAY: &str =
    "INSERT INTO budget_days (scope, day) VALUES (?, ?) ON CONFLICT DO NOTHING";
/// The check and the reservation are one statement: a row is only updated
/// if it can afford it. Written as `reserve <= daily - spent - reserved`:
/// every term is at most the daily budget, so nothing overflows (SQLite
/// would turn an overflowing sum into a REAL, Postgres would fail), even
/// for a reservation of `i64::MAX`.
pub(super) const RESERVE: &str = "UPDATE budget_days SET reserved_micros = reserved_micros + ? \
     WHERE scope = ? AND day = ? AND ? <= ? - spent_micros - reserved_micros";
pub(super) const SELECT_SPENT: &str =
    "SELECT spent_micros FROM budget_days WHERE scope = ? AND day = ?";
pub(super) const INSERT_REQUEST: &str = "INSERT INTO requests (id, request_id, instance, \
     started_at_ms, day, pipeline, provider, model, status, reserved_micros, budget_scopes) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)";
pub(super) const INSERT_REJECTED: &str = "INSERT INTO requests (id, request_id, instance, \
     started_at_ms, ended_at_ms, day, pipeline, provider, model, status, error_code, duration_ms) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (id) DO NOTHING";
pub(super) const SELECT_TO_SETTLE: &str =
    "SELECT day, reserved_micros, budget_scopes, status FROM requests WHERE id = ?";
pub(super) const SELECT_PENDING_OF: &str = "SELECT id FROM requests \
     WHERE status = 'pending' AND instance = ?";
pub(super) const SETTLE_REQUEST: &str = "UPDATE requests SET status = ?, ended_at_ms = ?, \
     provider = ?, model = ?, prompt_tokens = ?, completion_tokens = ?, estimated = ?, \
     cost_micros = ?, ttft_ms = ?, duration_ms = ?, tool_calls = ?, error_code = ?, \
     usage_anomaly = ? WHERE id = ?";
/// Binds the reservation, the charge twice, the scope and the day. The
/// charge never exceeds the reservation ([`charge`]), so the sum stays
/// within the budget; the CASE keeps it an integer whatever is stored.
pub(super) const SETTLE_BUDGET: &str = "UPDATE budget_days SET reserved_micros = \
     reserved_micros - ?, spent_micros = CASE WHEN spent_micros > 9223372036854775807 - ? \
     THEN 9223372036854775807 ELSE spent_micros + ? END WHERE scope = ? AND day = ? \
     RETURNING spent_micros, reserved_micros";
pub(super) const CLAIM_ALERT: &str = "INSERT INTO alerts_fired (scope, day, threshold_ppm, \
     fired_at_ms) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING";
pub(super) const ALERT_DELIVERED: &str =
    "UPDATE alerts_fired SET delivered = 1 WHERE scope = ? AND day = ? AND threshold_ppm = ?";
pub(super) const SELECT_BUDGET: &str =
    "SELECT spent_micros, reserved_micros FROM budget_days WHERE scope = ? AND day = ?";

/// The `requests` columns of a report row, in [`ReportRow`]'s order.
const ROW_COLUMNS: &str = "id, started_at_ms, ended_at_ms, day, pipeline, provider, model, status, \
     prompt_tokens, completion_tokens, estimated, reserved_micros, cost_micros, ttft_ms, duration_ms, \
     tool_calls, error_code, request_id, usage_anomaly";

/// The filter of [`select_rows`] for the rows of one request id.
pub(super) const OF_REQUEST_ID: &str = "request_id = ? ORDER BY started_at_ms, id";

/// The longest `usage_anomaly` kept.
const ANOMALY_MAX: usize = 1_000;

/// A token count as stored: `BIGINT` holds up to `i64::MAX`.
pub(super) fn stored_tokens(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// What settling `s` charges to each budget of a row that reserved
/// `reserved` (`scoped`: the row has budgets), and the anomaly to record.
/// A budgeted row is never charged more than its reservation, the most it
/// could honestly cost: a charge past it would push the budget past its
/// limit. Costs are never negative.
pub(super) fn charge(s: &Settlement, reserved: i64, scoped: bool) -> (i64, Option<String>) {
    let cost = s.cost_micros.max(0);
    let mut anomaly = s.usage_anomaly.clone();
    let charged = if scoped && cost > reserved {
        let why = format!(
            "cost ${} is above the reservation ${}; the reservation was charged",
            super::money::format_usd(cost),
            super::money::format_usd(reserved)
        );
        anomaly = Some(match anomaly {
            Some(a) => format!("{a}; {why}"),
            None => why,
        });
        reserved.max(0)
    } else {
        cost
    };
    if let Some(a) = anomaly.as_mut()
        && a.len() > ANOMALY_MAX
    {
        let mut end = ANOMALY_MAX;
        while !a.is_char_boundary(end) {
            end -= 1;
        }
        a.truncate(end);
    }
    (charged, anomaly)
}

/// `SELECT` of report rows `WHERE {filter}`.
pub(super) fn select_rows(filter: &str) -> String {
    format!("SELECT {ROW_COLUMNS} FROM requests WHERE {filter}")
}

/// The budget scopes of an opening, as the `budget_scopes` column keeps them.
pub(super) fn scope_list(o: &Opening) -> String {
    o.scopes
        .iter()
        .map(|s| s.key.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// This machine's name, to tell our own dead processes from live peers.
pub(super) fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Whether a process of this host still runs (Linux: /proc/PID exists).
/// Where that cannot be known, assume it does and rely on the heartbeat.
fn process_alive(pid: i64) -> bool {
    if !std::path::Path::new("/proc/self").exists() {
        return true;
    }
    pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A row of `instances`.
pub(super) struct Instance {
    pub id: String,
    pub last_seen_ms: i64,
    pub host: String,
    pub pid: i64,
}

/// The instances whose pending rows are not orphans: this one, and those
/// seen lately unless they are processes of this host that have died.
pub(super) fn alive_instances(me: &str, now: i64, instances: &[Instance]) -> HashSet<String> {
    let my_host = this_host();
    instances
        .iter()
        .filter(|i| {
            let dead_here = !i.host.is_empty() && i.host == my_host && !process_alive(i.pid);
            i.id == me || (i.last_seen_ms > now - INSTANCE_TIMEOUT_MS && !dead_here)
        })
        .map(|i| i.id.clone())
        .collect()
}

pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgPool),
    Memory(MemStore),
}

/// `?` -> `$1, $2, ...` for Postgres. Every statement is a constant of
/// this file; values only ever travel as bound parameters.
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
        }
    }};
}

impl Store {
    pub async fn connect(url: &str) -> Result<Store, LedgerError> {
        if url == "memory" {
            return Ok(Store::Memory(MemStore::default()));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            sqlx::migrate!("migrations/postgres").run(&pool).await?;
            return Ok(Store::Postgres(pool));
        }
        if !url.starts_with("sqlite:") {
            return Err(LedgerError::BadUrl(url.to_string()));
        }
        Ok(Store::Sqlite(SqliteStore::connect(url).await?))
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
            Store::Memory(_) => "memory",
        }
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(pool) => pool.close().await,
            Store::Memory(_) => {}
        }
    }

    pub async fn heartbeat(&self, instance: &str, now: i64) -> Result<(), LedgerError> {
        match self {
            Store::Sqlite(s) => s.heartbeat(instance, now).await,
            Store::Memory(_) => Ok(()),
            Store::Postgres(pool) => {
                sqlx::query(pg(UPSERT_INSTANCE))
                    .bind(instance)
                    .bind(now)
                    .bind(this_host())
                    .bind(i64::from(std::process::id()))
                    .execute(pool)
                    .await?;
                Ok(())
            }
        }
    }

    pub async fn recover(&self, me: &str, now: i64) -> Result<u64, LedgerError> {
        let pool = match self {
            Store::Sqlite(s) => return s.recover(me, now).await,
            Store::Memory(_) => return Ok(0),
            Store::Postgres(pool) => pool,
        };
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
                    .bind(&day)
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

    pub async fn open(
        &self,
        instance: &str,
        o: &Opening,
        now: i64,
        day: &str,
    ) -> Result<Admit, LedgerError> {
        match self {
            Store::Sqlite(s) => s.open(instance, o, now, day).await,
            Store::Memory(m) => m.open(instance, o, now, day),
            // Boxed: sqlx futures are large, and every request task would
            // otherwise carry their size whatever the storage.
            Store::Postgres(pool) => Box::pin(pg_open(pool, instance, o, now, day)).await,
        }
    }

    pub async fn record_rejected(
        &self,
        instance: &str,
        o: &Opening,
        now: i64,
        day: &str,
        status: &str,
        error_code: &str,
    ) -> Result<(), LedgerError> {
        match self {
            Store::Sqlite(s) => {
                s.record_rejected(instance, o, now, day, status, error_code)
                    .await
            }
            Store::Memory(m) => {
                m.record_rejected(instance, o, now, day, status, error_code);
                Ok(())
            }
            Store::Postgres(pool) => {
                Box::pin(pg_record_rejected(
                    pool, instance, o, now, day, status, error_code,
                ))
                .await
            }
        }
    }

    pub async fn settle(&self, id: &str, s: &Settlement, now: i64) -> Result<Settled, LedgerError> {
        match self {
            Store::Sqlite(store) => store.settle(id, s, now).await,
            Store::Memory(m) => Ok(m.settle(id, s, now)),
            Store::Postgres(pool) => Box::pin(pg_settle(pool, id, s, now)).await,
        }
    }

    pub async fn settle_failed(&self, id: &str, now: i64) -> Result<bool, LedgerError> {
        match self {
            Store::Sqlite(s) => s.end_pending(id, "settle_failed", now).await,
            Store::Memory(m) => Ok(m.end_pending(id, "settle_failed", now)),
            Store::Postgres(pool) => Box::pin(pg_end_pending(pool, id, "settle_failed", now)).await,
        }
    }

    pub async fn interrupt_pending_of(&self, instance: &str, now: i64) -> Result<u64, LedgerError> {
        let pool = match self {
            Store::Sqlite(s) => return s.interrupt_pending_of(instance, now).await,
            Store::Memory(m) => return Ok(m.interrupt_pending_of(instance, now)),
            Store::Postgres(pool) => pool,
        };
        let ids: Vec<String> = sqlx::query_scalar(pg(SELECT_PENDING_OF))
            .bind(instance)
            .fetch_all(pool)
            .await?;
        let mut count = 0;
        for id in ids {
            if Box::pin(pg_end_pending(pool, &id, "interrupted", now)).await? {
                count += 1;
            }
        }
        Ok(count)
    }

    pub async fn claim_alert(
        &self,
        scope: &str,
        day: &str,
        ppm: i64,
        now: i64,
    ) -> Result<bool, LedgerError> {
        match self {
            Store::Sqlite(s) => s.claim_alert(scope, day, ppm, now).await,
            Store::Memory(m) => Ok(m.claim_alert(scope, day, ppm)),
            Store::Postgres(pool) => Box::pin(pg_claim_alert(pool, scope, day, ppm, now)).await,
        }
    }

    pub async fn mark_alert_delivered(
        &self,
        scope: &str,
        day: &str,
        ppm: i64,
    ) -> Result<(), LedgerError> {
        match self {
            Store::Sqlite(s) => s.mark_alert_delivered(scope, day, ppm).await,
            Store::Memory(_) => Ok(()),
            Store::Postgres(pool) => Box::pin(pg_mark_alert_delivered(pool, scope, day, ppm)).await,
        }
    }

    pub async fn spend(&self, scope: &str, day: &str) -> Result<Spend, LedgerError> {
        match self {
            Store::Sqlite(s) => s.spend(scope, day).await,
            Store::Memory(m) => Ok(m.spend(scope, day)),
            Store::Postgres(pool) => Box::pin(pg_spend(pool, scope, day)).await,
        }
    }

    pub async fn rows_since(&self, since_ms: i64) -> Result<Vec<ReportRow>, LedgerError> {
        let pool = match self {
            Store::Sqlite(s) => return s.rows_since(since_ms).await,
            Store::Memory(m) => return Ok(m.rows_since(since_ms)),
            Store::Postgres(pool) => pool,
        };
        let rows = sqlx::query(pg(&select_rows(
            "started_at_ms >= ? ORDER BY started_at_ms",
        )))
        .bind(since_ms)
        .fetch_all(pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(report_row!(r));
        }
        Ok(out)
    }

    pub async fn rows_of(&self, request_id: &str) -> Result<Vec<ReportRow>, LedgerError> {
        let pool = match self {
            Store::Sqlite(s) => return s.rows_of(request_id).await,
            Store::Memory(m) => return Ok(m.rows_of(request_id)),
            Store::Postgres(pool) => pool,
        };
        let rows = sqlx::query(pg(&select_rows(OF_REQUEST_ID)))
            .bind(request_id)
            .fetch_all(pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(report_row!(r));
        }
        Ok(out)
    }
}

async fn pg_open(
    pool: &PgPool,
    instance: &str,
    o: &Opening,
    now: i64,
    day: &str,
) -> Result<Admit, LedgerError> {
    let mut tx = pool.begin().await?;
    for scope in &o.scopes {
        sqlx::query(pg(INSERT_BUDGET_DAY))
            .bind(&scope.key)
            .bind(day)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(pg(RESERVE))
            .bind(o.reserve_micros)
            .bind(&scope.key)
            .bind(day)
            .bind(o.reserve_micros)
            .bind(scope.daily_micros)
            .execute(&mut *tx)
            .await?
            .rows_affected();
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
                daily_micros: scope.daily_micros,
                spent_micros: spent,
            });
        }
    }
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
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Admit::Admitted)
}

async fn pg_record_rejected(
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
        .execute(pool)
        .await?;
    Ok(())
}

async fn pg_settle(
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
    let (charged, anomaly) = charge(s, reserved, !scopes.is_empty());
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
            .bind(&day)
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
async fn pg_end_pending(
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
            .bind(&day)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(true)
}

async fn pg_claim_alert(
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

async fn pg_mark_alert_delivered(
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

async fn pg_spend(pool: &PgPool, scope: &str, day: &str) -> Result<Spend, LedgerError> {
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
