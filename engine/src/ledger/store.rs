//! The ledger's backends, and the SQL they share. Statements are written
//! once with `?` placeholders: SQLite (`sqlite.rs`) runs them as they are,
//! Postgres (`postgres.rs`, through sqlx) with the placeholders numbered.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

use super::console;
use super::memory::MemStore;
use super::postgres;
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
     started_at_ms, day, pipeline, provider, model, status, reserved_micros, budget_scopes, \
     api_key, team, rate_buckets, rate_tokens) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)";
/// A rate bucket is made by the first request that finds none; on
/// Postgres it is then read again, locked, so that two instances' first
/// requests take turns on one row.
pub(super) const INSERT_BUCKET: &str =
    "INSERT INTO rate_buckets (bucket, fill, updated_ms) VALUES (?, 0, ?) ON CONFLICT DO NOTHING";
pub(super) const SELECT_BUCKET: &str = "SELECT fill, updated_ms FROM rate_buckets WHERE bucket = ?";
/// The same on Postgres, which locks the bucket's row until the commit.
pub(super) const SELECT_BUCKET_LOCKED: &str =
    "SELECT fill, updated_ms FROM rate_buckets WHERE bucket = ? FOR UPDATE";
pub(super) const UPDATE_BUCKET: &str =
    "UPDATE rate_buckets SET fill = ?, updated_ms = ? WHERE bucket = ?";
/// Gives back tokens a request reserved and did not use (binds the amount
/// twice, in minute-milliseconds, then the bucket); never below empty.
pub(super) const REFUND_BUCKET: &str = "UPDATE rate_buckets SET fill = CASE WHEN fill > ? \
     THEN fill - ? ELSE 0 END WHERE bucket = ?";
pub(super) const INSERT_REJECTED: &str = "INSERT INTO requests (id, request_id, instance, \
     started_at_ms, ended_at_ms, day, pipeline, provider, model, status, error_code, duration_ms, \
     api_key, team) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?) ON CONFLICT (id) DO NOTHING";
pub(super) const SELECT_TO_SETTLE: &str = "SELECT day, reserved_micros, budget_scopes, status, \
     rate_buckets, rate_tokens FROM requests WHERE id = ?";
pub(super) const SELECT_PENDING_OF: &str = "SELECT id FROM requests \
     WHERE status = 'pending' AND instance = ?";
pub(super) const SETTLE_REQUEST: &str = "UPDATE requests SET status = ?, ended_at_ms = ?, \
     provider = ?, model = ?, prompt_tokens = ?, completion_tokens = ?, estimated = ?, \
     cost_micros = ?, ttft_ms = ?, duration_ms = ?, tool_calls = ?, error_code = ?, \
     usage_anomaly = ?, cache_read_tokens = ?, cache_write_tokens = ?, \
     cache_write_1h_tokens = ? WHERE id = ?";
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
     tool_calls, error_code, request_id, usage_anomaly, cache_read_tokens, cache_write_tokens, \
     api_key, team, cache_write_1h_tokens";

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

/// The token buckets of an opening, as the `rate_buckets` column keeps
/// them, and the tokens it takes from each.
pub(super) fn token_buckets(o: &Opening) -> (String, i64) {
    let tokens: Vec<_> = o.rates.iter().filter(|r| r.is_tokens()).collect();
    let names = tokens
        .iter()
        .map(|r| r.bucket.as_str())
        .collect::<Vec<_>>()
        .join(",");
    (names, tokens.first().map_or(0, |r| r.amount))
}

/// What settling `s` gives back to each token bucket of a row that took
/// `reserved` tokens from it, in minute-milliseconds.
pub(super) fn token_refund(s: &Settlement, reserved: i64) -> i64 {
    let used = s.prompt_tokens.saturating_add(s.completion_tokens);
    let used = i64::try_from(used).unwrap_or(i64::MAX);
    reserved
        .saturating_sub(used)
        .max(0)
        .saturating_mul(super::rate::WINDOW_MS)
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
            let migrator = sqlx::migrate!("migrations/postgres");
            let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
            migrator.run(&pool).await.map_err(|e| match e {
                // Applied by a newer Sluice: not this binary's to undo.
                sqlx::migrate::MigrateError::VersionMissing(found) if found > known => {
                    LedgerError::NewerSchema { found, known }
                }
                e => e.into(),
            })?;
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
            Store::Postgres(pool) => postgres::heartbeat(pool, instance, now).await,
        }
    }

    pub async fn recover(&self, me: &str, now: i64) -> Result<u64, LedgerError> {
        match self {
            Store::Sqlite(s) => s.recover(me, now).await,
            Store::Memory(_) => Ok(0),
            Store::Postgres(pool) => Box::pin(postgres::recover(pool, me, now)).await,
        }
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
            Store::Postgres(pool) => Box::pin(postgres::open(pool, instance, o, now, day)).await,
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
                Box::pin(postgres::record_rejected(
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
            Store::Postgres(pool) => Box::pin(postgres::settle(pool, id, s, now)).await,
        }
    }

    pub async fn settle_failed(&self, id: &str, now: i64) -> Result<bool, LedgerError> {
        match self {
            Store::Sqlite(s) => s.end_pending(id, "settle_failed", now).await,
            Store::Memory(m) => Ok(m.end_pending(id, "settle_failed", now)),
            Store::Postgres(pool) => {
                Box::pin(postgres::end_pending(pool, id, "settle_failed", now)).await
            }
        }
    }

    pub async fn interrupt_pending_of(&self, instance: &str, now: i64) -> Result<u64, LedgerError> {
        match self {
            Store::Sqlite(s) => s.interrupt_pending_of(instance, now).await,
            Store::Memory(m) => Ok(m.interrupt_pending_of(instance, now)),
            Store::Postgres(pool) => {
                Box::pin(postgres::interrupt_pending_of(pool, instance, now)).await
            }
        }
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
            Store::Memory(m) => Ok(m.claim_alert(scope, day, ppm, now)),
            Store::Postgres(pool) => {
                Box::pin(postgres::claim_alert(pool, scope, day, ppm, now)).await
            }
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
            Store::Postgres(pool) => {
                Box::pin(postgres::mark_alert_delivered(pool, scope, day, ppm)).await
            }
        }
    }

    pub async fn spend(&self, scope: &str, day: &str) -> Result<Spend, LedgerError> {
        match self {
            Store::Sqlite(s) => s.spend(scope, day).await,
            Store::Memory(m) => Ok(m.spend(scope, day)),
            Store::Postgres(pool) => Box::pin(postgres::spend(pool, scope, day)).await,
        }
    }

    pub async fn rows_since(&self, since_ms: i64) -> Result<Vec<ReportRow>, LedgerError> {
        match self {
            Store::Sqlite(s) => s.rows_since(since_ms).await,
            Store::Memory(m) => Ok(m.rows_since(since_ms)),
            Store::Postgres(pool) => Box::pin(postgres::rows_since(pool, since_ms)).await,
        }
    }

    pub async fn rows_of(&self, request_id: &str) -> Result<Vec<ReportRow>, LedgerError> {
        match self {
            Store::Sqlite(s) => s.rows_of(request_id).await,
            Store::Memory(m) => Ok(m.rows_of(request_id)),
            Store::Postgres(pool) => Box::pin(postgres::rows_of(pool, request_id)).await,
        }
    }

    /// Usage of the days `from..=to`, by day and group (`console.rs`).
    pub async fn usage(
        &self,
        from: &str,
        to: &str,
        by: console::UsageBy,
    ) -> Result<Vec<console::UsageCell>, LedgerError> {
        match self {
            Store::Sqlite(s) => s.usage(from, to, by).await,
            Store::Memory(m) => Ok(console::usage_of_rows(
                &m.rows_since(i64::MIN),
                from,
                to,
                by,
            )),
            Store::Postgres(pool) => Box::pin(postgres::usage(pool, from, to, by)).await,
        }
    }

    /// The requests `f` selects, newest first.
    pub async fn requests(
        &self,
        f: &console::RequestFilter,
    ) -> Result<Vec<ReportRow>, LedgerError> {
        match self {
            Store::Sqlite(s) => s.requests(f).await,
            Store::Memory(m) => Ok(console::filter_rows(m.rows_since(i64::MIN), f)),
            Store::Postgres(pool) => Box::pin(postgres::requests(pool, f)).await,
        }
    }

    /// The alerts fired in `day` or `month`.
    pub async fn alerts(
        &self,
        day: &str,
        month: &str,
    ) -> Result<Vec<console::AlertFired>, LedgerError> {
        match self {
            Store::Sqlite(s) => s.alerts(day, month).await,
            Store::Memory(m) => Ok(m.alerts(day, month)),
            Store::Postgres(pool) => Box::pin(postgres::alerts(pool, day, month)).await,
        }
    }

    /// First-token times of the latest `limit` requests since `since_ms`.
    pub async fn ttfts(&self, since_ms: i64, limit: i64) -> Result<Vec<i64>, LedgerError> {
        match self {
            Store::Sqlite(s) => s.ttfts(since_ms, limit).await,
            Store::Memory(m) => {
                let mut rows = m.rows_since(since_ms);
                rows.reverse();
                Ok(rows
                    .iter()
                    .filter_map(|r| r.ttft_ms)
                    .take(usize::try_from(limit).unwrap_or(0))
                    .collect())
            }
            Store::Postgres(pool) => Box::pin(postgres::ttfts(pool, since_ms, limit)).await,
        }
    }
}
