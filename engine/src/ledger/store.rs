//! The SQL behind the ledger, for SQLite and Postgres. Statements are
//! written once with `?` placeholders; `on_store!` runs the same code on
//! either pool (numbering the placeholders for Postgres).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row};

use super::memory::MemStore;
use super::report::Row as ReportRow;
use super::{Admit, LedgerError, Opening, Settled, Settlement, Spend};

/// An instance not seen for this long is dead; its pending rows are orphans.
pub const INSTANCE_TIMEOUT_MS: i64 = 30_000;

/// This machine's name, to tell our own dead processes from live peers.
fn this_host() -> String {
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

pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    Memory(MemStore),
}

/// Starts a transaction that will write. SQLite must take the write lock at
/// BEGIN: a deferred transaction that reads first and writes later fails
/// with SQLITE_BUSY when another connection wrote in between, instead of
/// waiting its turn.
trait BeginWrite {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>;
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.begin().await
    }
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

fn same(sql: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(sql.to_string())
}

/// Runs `$body` with `$pool` bound to the backend's pool and `$q` to the
/// placeholder rewriter.
macro_rules! on_store {
    ($store:expr, |$pool:ident, $q:ident| $body:expr, |$m:ident| $mem:expr) => {
        match $store {
            Store::Sqlite($pool) => {
                let $q = same;
                $body
            }
            Store::Postgres($pool) => {
                let $q = pg;
                $body
            }
            Store::Memory($m) => $mem,
        }
    };
}

const ROW_COLUMNS: &str = "id, started_at_ms, ended_at_ms, day, pipeline, provider, model, status, \
     prompt_tokens, completion_tokens, estimated, reserved_micros, cost_micros, ttft_ms, duration_ms, \
     tool_calls, error_code";

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
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(if memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        if !memory {
            let path = options.get_filename();
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                let _ = std::fs::create_dir_all(dir);
            }
        }
        // One connection: SQLite has one writer anyway, and with several
        // connections the losers of BEGIN IMMEDIATE sleep in SQLite's busy
        // handler (1, 2, 5 ... ms) instead of queueing; one connection makes
        // them wait in the pool's queue, in order, without sleeping. (An
        // in-memory database exists per connection: it needs exactly one.)
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .idle_timeout(if memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if memory {
                None
            } else {
                Some(Duration::from_secs(3600))
            })
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(Store::Sqlite(pool))
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
            Store::Memory(_) => "memory",
        }
    }

    pub async fn close(&self) {
        on_store!(self, |pool, _q| pool.close().await, |_m| ())
    }

    pub async fn heartbeat(&self, instance: &str, now: i64) -> Result<(), LedgerError> {
        let (host, pid) = (this_host(), i64::from(std::process::id()));
        on_store!(
            self,
            |pool, q| {
                sqlx::query(q(
                    "INSERT INTO instances (id, last_seen_ms, host, pid) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms",
                ))
                .bind(instance)
                .bind(now)
                .bind(&host)
                .bind(pid)
                .execute(pool)
                .await?;
                Ok(())
            },
            |_m| Ok(())
        )
    }

    pub async fn recover(&self, me: &str, now: i64) -> Result<u64, LedgerError> {
        on_store!(
            self,
            |pool, q| {
                let mut tx = pool.begin_write().await?;
                let live = sqlx::query(q("SELECT id, last_seen_ms, host, pid FROM instances"))
                    .fetch_all(&mut *tx)
                    .await?;
                let mut alive = std::collections::HashSet::new();
                let my_host = this_host();
                for r in &live {
                    let id: String = r.try_get("id")?;
                    let seen: i64 = r.try_get("last_seen_ms")?;
                    let host: String = r.try_get("host")?;
                    let pid: i64 = r.try_get("pid")?;
                    let dead_here = !host.is_empty() && host == my_host && !process_alive(pid);
                    if id == me || (seen > now - INSTANCE_TIMEOUT_MS && !dead_here) {
                        alive.insert(id);
                    }
                }
                let pending = sqlx::query(q(
                    "SELECT id, instance, day, reserved_micros, budget_scopes FROM requests \
                 WHERE status = 'pending'",
                ))
                .fetch_all(&mut *tx)
                .await?;
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
                    sqlx::query(q("UPDATE requests SET status = 'interrupted', cost_micros = reserved_micros, \
                     ended_at_ms = ?, error_code = 'interrupted' WHERE id = ? AND status = 'pending'"))
                .bind(now)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
                    for scope in scopes.split(',').filter(|s| !s.is_empty()) {
                        sqlx::query(q(
                            "UPDATE budget_days SET reserved_micros = reserved_micros - ?, \
                         spent_micros = spent_micros + ? WHERE scope = ? AND day = ?",
                        ))
                        .bind(reserved)
                        .bind(reserved)
                        .bind(scope)
                        .bind(&day)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                for r in &live {
                    let id: String = r.try_get("id")?;
                    if !alive.contains(&id) {
                        sqlx::query(q("DELETE FROM instances WHERE id = ?"))
                            .bind(&id)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await?;
                Ok(count)
            },
            |_m| Ok(0)
        )
    }

    pub async fn open(
        &self,
        instance: &str,
        o: &Opening,
        now: i64,
        day: &str,
    ) -> Result<Admit, LedgerError> {
        let scopes = o
            .scopes
            .iter()
            .map(|s| s.key.as_str())
            .collect::<Vec<_>>()
            .join(",");
        on_store!(
            self,
            |pool, q| {
                let mut tx = pool.begin_write().await?;
                let mut exhausted = None;
                for scope in &o.scopes {
                    sqlx::query(q(
                        "INSERT INTO budget_days (scope, day) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    ))
                    .bind(&scope.key)
                    .bind(day)
                    .execute(&mut *tx)
                    .await?;
                    // The check and the reservation are one statement: a row is
                    // only updated if it can afford it.
                    let done = sqlx::query(q(
                        "UPDATE budget_days SET reserved_micros = reserved_micros + ? \
                     WHERE scope = ? AND day = ? AND spent_micros + reserved_micros + ? <= ?",
                    ))
                    .bind(o.reserve_micros)
                    .bind(&scope.key)
                    .bind(day)
                    .bind(o.reserve_micros)
                    .bind(scope.daily_micros)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if done == 0 {
                        let spent: i64 = sqlx::query(q(
                            "SELECT spent_micros FROM budget_days WHERE scope = ? AND day = ?",
                        ))
                        .bind(&scope.key)
                        .bind(day)
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get(0)?;
                        exhausted = Some(Admit::Exhausted {
                            scope: scope.key.clone(),
                            daily_micros: scope.daily_micros,
                            spent_micros: spent,
                        });
                        break;
                    }
                }
                if let Some(rejection) = exhausted {
                    tx.rollback().await?;
                    return Ok(rejection);
                }
                sqlx::query(q("INSERT INTO requests (id, instance, started_at_ms, day, pipeline, provider, model, \
                 status, reserved_micros, budget_scopes) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)"))
            .bind(&o.id)
            .bind(instance)
            .bind(now)
            .bind(day)
            .bind(&o.pipeline)
            .bind(&o.provider)
            .bind(&o.model)
            .bind(if o.scopes.is_empty() { 0 } else { o.reserve_micros })
            .bind(&scopes)
            .execute(&mut *tx)
            .await?;
                tx.commit().await?;
                Ok(Admit::Admitted)
            },
            |m| m.open(instance, o, now, day)
        )
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
        on_store!(
            self,
            |pool, q| {
                sqlx::query(q("INSERT INTO requests (id, instance, started_at_ms, ended_at_ms, day, pipeline, \
                 provider, model, status, error_code, duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0) \
                 ON CONFLICT (id) DO NOTHING"))
            .bind(&o.id)
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
            },
            |m| {
                m.record_rejected(instance, o, now, day, status, error_code);
                Ok(())
            }
        )
    }

    pub async fn settle(&self, id: &str, s: &Settlement, now: i64) -> Result<Settled, LedgerError> {
        on_store!(
            self,
            |pool, q| {
                let mut tx = pool.begin_write().await?;
                let row = sqlx::query(q(
                    "SELECT day, reserved_micros, budget_scopes, status FROM requests WHERE id = ?",
                ))
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
                sqlx::query(q("UPDATE requests SET status = ?, ended_at_ms = ?, provider = ?, model = ?, prompt_tokens = ?, \
                 completion_tokens = ?, estimated = ?, cost_micros = ?, ttft_ms = ?, duration_ms = ?, \
                 tool_calls = ?, error_code = ? WHERE id = ?"))
            .bind(s.status)
            .bind(now)
            .bind(&s.provider)
            .bind(&s.model)
            .bind(s.prompt_tokens as i64)
            .bind(s.completion_tokens as i64)
            .bind(i64::from(s.estimated))
            .bind(s.cost_micros)
            .bind(s.ttft_ms)
            .bind(s.duration_ms)
            .bind(i64::from(s.tool_calls))
            .bind(s.error_code)
            .bind(id)
            .execute(&mut *tx)
            .await?;
                let mut spends = Vec::new();
                for scope in scopes.split(',').filter(|s| !s.is_empty()) {
                    let r = sqlx::query(q(
                        "UPDATE budget_days SET reserved_micros = reserved_micros - ?, \
                     spent_micros = spent_micros + ? WHERE scope = ? AND day = ? \
                     RETURNING spent_micros, reserved_micros",
                    ))
                    .bind(reserved)
                    .bind(s.cost_micros)
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
            },
            |m| Ok(m.settle(id, s, now))
        )
    }

    pub async fn claim_alert(
        &self,
        scope: &str,
        day: &str,
        ppm: i64,
        now: i64,
    ) -> Result<bool, LedgerError> {
        on_store!(
            self,
            |pool, q| {
                let n = sqlx::query(q(
                    "INSERT INTO alerts_fired (scope, day, threshold_ppm, fired_at_ms) \
                 VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                ))
                .bind(scope)
                .bind(day)
                .bind(ppm)
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected();
                Ok(n == 1)
            },
            |m| Ok(m.claim_alert(scope, day, ppm))
        )
    }

    pub async fn mark_alert_delivered(
        &self,
        scope: &str,
        day: &str,
        ppm: i64,
    ) -> Result<(), LedgerError> {
        on_store!(
            self,
            |pool, q| {
                sqlx::query(q("UPDATE alerts_fired SET delivered = 1 WHERE scope = ? AND day = ? AND threshold_ppm = ?"))
                .bind(scope)
                .bind(day)
                .bind(ppm)
                .execute(pool)
                .await?;
                Ok(())
            },
            |_m| Ok(())
        )
    }

    pub async fn spend(&self, scope: &str, day: &str) -> Result<Spend, LedgerError> {
        on_store!(
            self,
            |pool, q| {
                let r = sqlx::query(q("SELECT spent_micros, reserved_micros FROM budget_days WHERE scope = ? AND day = ?"))
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
            },
            |m| Ok(m.spend(scope, day))
        )
    }

    pub async fn rows_since(&self, since_ms: i64) -> Result<Vec<ReportRow>, LedgerError> {
        on_store!(
            self,
            |pool, q| {
                let rows = sqlx::query(q(&format!(
                "SELECT {ROW_COLUMNS} FROM requests WHERE started_at_ms >= ? ORDER BY started_at_ms"
            )))
            .bind(since_ms)
            .fetch_all(pool)
            .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    out.push(report_row!(r));
                }
                Ok(out)
            },
            |m| Ok(m.rows_since(since_ms))
        )
    }

    pub async fn row(&self, id: &str) -> Result<Option<ReportRow>, LedgerError> {
        on_store!(
            self,
            |pool, q| {
                let r = sqlx::query(q(&format!(
                    "SELECT {ROW_COLUMNS} FROM requests WHERE id = ?"
                )))
                .bind(id)
                .fetch_optional(pool)
                .await?;
                Ok(match r {
                    Some(r) => Some(report_row!(&r)),
                    None => None,
                })
            },
            |m| Ok(m.row(id))
        )
    }
}
