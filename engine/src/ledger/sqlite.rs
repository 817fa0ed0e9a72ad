//! The SQLite ledger: one connection, owned by a writer thread that
//! group-commits.
//!
//! SQLite has one writer at a time, so the ledger keeps one connection and
//! gives it a thread of its own. Callers send it operations over a
//! channel; the thread takes every operation waiting (up to
//! `sqlite_writer::MAX_BATCH`), runs them one after the other inside one `BEGIN
//! IMMEDIATE` transaction, each in its own savepoint, commits once, and
//! only then answers each caller. Under load, many requests share one
//! commit; alone, a request pays one short transaction and two thread
//! hops, not a hop per statement.
//!
//! The batch changes nothing that a caller can see: operations run in
//! arrival order, each sees the ones before it, a budget check and its
//! reservation are still one step, and no answer leaves before the commit
//! that makes it durable, so "no ledger row, no provider call" holds. An
//! operation that fails or is refused (a budget that cannot afford it)
//! rolls back to its savepoint and does not disturb the others; a failed
//! commit fails every operation of the batch.

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::report::Row as ReportRow;
use super::sqlite_file::{WAL_LIMIT, WalBound, connect, parse_url};
use super::sqlite_writer::{Done, Finish, Msg, Work, writer};
use super::store::{
    self, INSERT_BUDGET_DAY, INSERT_REJECTED, INSERT_REQUEST, RESERVE, SELECT_SPENT, SETTLE_BUDGET,
    SETTLE_REQUEST, UPSERT_INSTANCE,
};
use super::{Admit, LedgerError, Opening, Settled, Settlement, Spend, period, rate};

pub struct SqliteStore {
    tx: mpsc::UnboundedSender<Msg>,
    /// The console's reads, for a ledger in a file (`sqlite_reader.rs`).
    pub(super) reader: Option<std::sync::Arc<super::sqlite_reader::Reader>>,
    /// Transactions committed (or tried), for tests of the batching.
    #[cfg(test)]
    batches: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        LedgerError::Sqlite(e.to_string())
    }
}

impl SqliteStore {
    pub async fn connect(url: &str) -> Result<SqliteStore, LedgerError> {
        let url = url.to_string();
        let wal = parse_url(&url).map(|path| WalBound {
            path: std::path::PathBuf::from(format!("{path}-wal")),
            next_at: WAL_LIMIT,
        });
        let path = parse_url(&url).map(str::to_owned);
        let (conn, checkpointer, reader) = tokio::task::spawn_blocking(move || {
            let (conn, checkpointer) = connect(&url)?;
            // Opened once the schema is up to date.
            let reader = path
                .as_deref()
                .map(super::sqlite_reader::Reader::open)
                .transpose()?
                .map(std::sync::Arc::new);
            Ok::<_, LedgerError>((conn, checkpointer, reader))
        })
        .await
        .map_err(|_| LedgerError::Closed)??;
        let (tx, rx) = mpsc::unbounded_channel();
        #[cfg(test)]
        let batches = std::sync::Arc::<std::sync::atomic::AtomicU64>::default();
        #[cfg(test)]
        let counted = batches.clone();
        let on_batch = move || {
            #[cfg(test)]
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        std::thread::Builder::new()
            .name("sluice-ledger".into())
            .spawn(move || writer(conn, rx, checkpointer, wal, on_batch))
            .map_err(|e| LedgerError::Sqlite(format!("cannot start the ledger thread: {e}")))?;
        Ok(SqliteStore {
            tx,
            reader,
            #[cfg(test)]
            batches,
        })
    }

    /// Runs `op` in the next batch and returns its answer once committed.
    pub(super) async fn call<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> rusqlite::Result<Done<T>> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let (answer, answered) = oneshot::channel();
        let work: Work = Box::new(move |conn| {
            let (keep, result) = match conn.map(op) {
                Ok(Ok(Done::Keep(v))) => (true, Ok(v)),
                Ok(Ok(Done::Undo(v))) => (false, Ok(v)),
                Ok(Err(e)) => (false, Err(e.into())),
                Err(why) => (false, Err(LedgerError::Sqlite(why.to_string()))),
            };
            let finish: Finish = Box::new(move |commit| {
                let result = match commit {
                    Some(e) => Err(LedgerError::Sqlite(format!("commit failed: {e}"))),
                    None => result,
                };
                let _ = answer.send(result);
            });
            (keep, finish)
        });
        self.tx
            .send(Msg::Work(work))
            .map_err(|_| LedgerError::Closed)?;
        answered.await.map_err(|_| LedgerError::Closed)?
    }

    /// Waits for what was sent before, then closes the connection.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.tx.send(Msg::Close(done)).is_ok() {
            let _ = closed.await;
        }
    }

    pub async fn heartbeat(&self, instance: &str, now: i64) -> Result<(), LedgerError> {
        let (instance, host, pid) = (
            instance.to_string(),
            store::this_host(),
            i64::from(std::process::id()),
        );
        self.call(move |c| {
            c.prepare_cached(UPSERT_INSTANCE)?
                .execute(params![instance, now, host, pid])?;
            Ok(Done::Keep(()))
        })
        .await
    }

    pub async fn recover(&self, me: &str, now: i64) -> Result<u64, LedgerError> {
        let me = me.to_string();
        self.call(move |c| {
            let instances = c
                .prepare(store::SELECT_INSTANCES)?
                .query_map([], |r| {
                    Ok(store::Instance {
                        id: r.get(0)?,
                        last_seen_ms: r.get(1)?,
                        host: r.get(2)?,
                        pid: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let alive = store::alive_instances(&me, now, &instances);
            let pending = c
                .prepare(store::SELECT_PENDING)?
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut count = 0;
            for (id, instance, day, reserved, scopes) in pending {
                if alive.contains(&instance) {
                    continue;
                }
                count += 1;
                c.prepare_cached(store::INTERRUPT_REQUEST)?
                    .execute(params!["interrupted", "interrupted", now, id])?;
                for scope in scopes.split(',').filter(|s| !s.is_empty()) {
                    c.prepare_cached(store::SPEND_RESERVATION)?
                        .execute(params![
                            reserved,
                            reserved,
                            reserved,
                            scope,
                            period(scope, &day)
                        ])?;
                }
            }
            for i in &instances {
                if !alive.contains(&i.id) {
                    c.execute(store::DELETE_INSTANCE, [&i.id])?;
                }
            }
            Ok(Done::Keep(count))
        })
        .await
    }

    pub async fn open(
        &self,
        instance: &str,
        o: &Opening,
        now: i64,
        day: &str,
    ) -> Result<Admit, LedgerError> {
        let (instance, o, day) = (instance.to_string(), o.clone(), day.to_string());
        self.call(move |c| {
            // Rate limits first: a request they refuse reserves nothing.
            // A bucket is read first and created only when absent (the
            // writer is alone: nothing comes in between).
            for charge in &o.rates {
                let read = |c: &Connection| {
                    c.prepare_cached(store::SELECT_BUCKET)?
                        .query_row([&charge.bucket], |r| {
                            Ok(rate::BucketState {
                                fill: r.get(0)?,
                                updated_ms: r.get(1)?,
                            })
                        })
                        .optional()
                };
                let state = match read(c)? {
                    Some(s) => s,
                    None => {
                        c.prepare_cached(store::INSERT_BUCKET)?
                            .execute(params![charge.bucket, now])?;
                        rate::BucketState {
                            fill: 0,
                            updated_ms: now,
                        }
                    }
                };
                match rate::take(state, charge, now) {
                    (Some(next), _) => {
                        c.prepare_cached(store::UPDATE_BUCKET)?.execute(params![
                            next.fill,
                            next.updated_ms,
                            charge.bucket
                        ])?;
                    }
                    (None, standing) => {
                        return Ok(Done::Undo(Admit::RateLimited {
                            bucket: charge.bucket.clone(),
                            standing,
                        }));
                    }
                }
            }
            for scope in &o.scopes {
                let period = period(&scope.key, &day);
                // The check and the reservation are one statement: a row
                // is only updated if it can afford it. The period's row is
                // made only when the first request of the period finds none.
                let reserve = |c: &Connection| {
                    c.prepare_cached(RESERVE)?.execute(params![
                        o.reserve_micros,
                        scope.key,
                        period,
                        o.reserve_micros,
                        scope.limit_micros
                    ])
                };
                let mut done = reserve(c)?;
                if done == 0 {
                    c.prepare_cached(INSERT_BUDGET_DAY)?
                        .execute(params![scope.key, period])?;
                    done = reserve(c)?;
                }
                if done == 0 {
                    let spent: i64 = c
                        .prepare_cached(SELECT_SPENT)?
                        .query_row(params![scope.key, period], |r| r.get(0))?;
                    return Ok(Done::Undo(Admit::Exhausted {
                        scope: scope.key.clone(),
                        limit_micros: scope.limit_micros,
                        spent_micros: spent,
                    }));
                }
            }
            let reserved = if o.scopes.is_empty() {
                0
            } else {
                o.reserve_micros
            };
            let (rate_buckets, rate_tokens) = store::token_buckets(&o);
            c.prepare_cached(INSERT_REQUEST)?.execute(params![
                o.id,
                o.request_id,
                instance,
                now,
                day,
                o.pipeline,
                o.provider,
                o.model,
                reserved,
                store::scope_list(&o),
                o.api_key,
                o.team,
                rate_buckets,
                rate_tokens,
            ])?;
            Ok(Done::Keep(Admit::Admitted))
        })
        .await
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
        let (instance, o, day) = (instance.to_string(), o.clone(), day.to_string());
        let (status, error_code) = (status.to_string(), error_code.to_string());
        self.call(move |c| {
            c.prepare_cached(INSERT_REJECTED)?.execute(params![
                o.id,
                o.request_id,
                instance,
                now,
                now,
                day,
                o.pipeline,
                o.provider,
                o.model,
                status,
                error_code,
                o.api_key,
                o.team
            ])?;
            Ok(Done::Keep(()))
        })
        .await
    }

    pub async fn settle(&self, id: &str, s: &Settlement, now: i64) -> Result<Settled, LedgerError> {
        let (id, s) = (id.to_string(), s.clone());
        self.call(move |c| {
            let row = c
                .prepare_cached(store::SELECT_TO_SETTLE)?
                .query_row([&id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, i64>(5)?,
                    ))
                })
                .optional()?;
            // Unknown, or already settled (or recovered as interrupted):
            // settling twice would count the money twice.
            let Some((day, reserved, scopes, status, buckets, tokens)) = row else {
                return Ok(Done::Keep(Settled::default()));
            };
            if status != "pending" {
                return Ok(Done::Keep(Settled::default()));
            }
            let (charged, anomaly) = store::charge(&s, reserved, !scopes.is_empty());
            c.prepare_cached(SETTLE_REQUEST)?.execute(params![
                s.status,
                now,
                s.provider,
                s.model,
                store::stored_tokens(s.prompt_tokens),
                store::stored_tokens(s.completion_tokens),
                i64::from(s.estimated),
                charged,
                s.ttft_ms,
                s.duration_ms,
                i64::from(s.tool_calls),
                s.error_code,
                anomaly,
                store::stored_tokens(s.cache_read_tokens),
                store::stored_tokens(s.cache_write_tokens),
                store::stored_tokens(s.cache_write_1h_tokens),
                id,
            ])?;
            let mut spends = Vec::new();
            for scope in scopes.split(',').filter(|s| !s.is_empty()) {
                let spend = c.prepare_cached(SETTLE_BUDGET)?.query_row(
                    params![reserved, charged, charged, scope, period(scope, &day)],
                    |r| {
                        Ok(Spend {
                            spent_micros: r.get(0)?,
                            reserved_micros: r.get(1)?,
                        })
                    },
                )?;
                spends.push((scope.to_string(), spend));
            }
            let back = store::token_refund(&s, tokens);
            for bucket in buckets.split(',').filter(|b| !b.is_empty() && back > 0) {
                c.prepare_cached(store::REFUND_BUCKET)?
                    .execute(params![back, back, bucket])?;
            }
            Ok(Done::Keep(Settled { day, spends }))
        })
        .await
    }

    /// Ends a pending row without its usage (`interrupted`,
    /// `settle_failed`): its reservation becomes its cost. False when it
    /// was not pending.
    pub async fn end_pending(&self, id: &str, status: &str, now: i64) -> Result<bool, LedgerError> {
        let (id, status) = (id.to_string(), status.to_string());
        self.call(move |c| Ok(Done::Keep(end_pending(c, &id, &status, now)?)))
            .await
    }

    pub async fn interrupt_pending_of(&self, instance: &str, now: i64) -> Result<u64, LedgerError> {
        let instance = instance.to_string();
        self.call(move |c| {
            let ids = c
                .prepare(store::SELECT_PENDING_OF)?
                .query_map([&instance], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut count = 0;
            for id in ids {
                if end_pending(c, &id, "interrupted", now)? {
                    count += 1;
                }
            }
            Ok(Done::Keep(count))
        })
        .await
    }

    pub async fn claim_alert(
        &self,
        scope: &str,
        day: &str,
        ppm: i64,
        now: i64,
    ) -> Result<bool, LedgerError> {
        let (scope, day) = (scope.to_string(), day.to_string());
        self.call(move |c| {
            let n = c
                .prepare_cached(store::CLAIM_ALERT)?
                .execute(params![scope, day, ppm, now])?;
            Ok(Done::Keep(n == 1))
        })
        .await
    }

    pub async fn mark_alert_delivered(
        &self,
        scope: &str,
        day: &str,
        ppm: i64,
    ) -> Result<(), LedgerError> {
        let (scope, day) = (scope.to_string(), day.to_string());
        self.call(move |c| {
            c.prepare_cached(store::ALERT_DELIVERED)?
                .execute(params![scope, day, ppm])?;
            Ok(Done::Keep(()))
        })
        .await
    }

    /// How many transactions the writer ran (tests only).
    #[cfg(test)]
    pub fn batches(&self) -> u64 {
        self.batches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs raw SQL on the ledger's connection (tests only).
    #[cfg(test)]
    pub async fn execute(&self, sql: &'static str, arg: String) -> Result<usize, LedgerError> {
        self.call(move |c| Ok(Done::Keep(c.execute(sql, [arg])?)))
            .await
    }
}

/// A `requests` row in [`store::ROW_COLUMNS`] order.
pub(super) fn report_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReportRow> {
    Ok(ReportRow {
        id: r.get(0)?,
        started_at_ms: r.get(1)?,
        ended_at_ms: r.get(2)?,
        day: r.get(3)?,
        pipeline: r.get(4)?,
        provider: r.get(5)?,
        model: r.get(6)?,
        status: r.get(7)?,
        prompt_tokens: r.get(8)?,
        completion_tokens: r.get(9)?,
        estimated: r.get::<_, i64>(10)? != 0,
        reserved_micros: r.get(11)?,
        cost_micros: r.get(12)?,
        ttft_ms: r.get(13)?,
        duration_ms: r.get(14)?,
        tool_calls: r.get(15)?,
        error_code: r.get(16)?,
        request_id: r.get(17)?,
        usage_anomaly: r.get(18)?,
        cache_read_tokens: r.get(19)?,
        cache_write_tokens: r.get(20)?,
        api_key: r.get(21)?,
        team: r.get(22)?,
        cache_write_1h_tokens: r.get(23)?,
    })
}

/// See [`SqliteStore::end_pending`]; runs inside the caller's operation.
fn end_pending(c: &Connection, id: &str, status: &str, now: i64) -> rusqlite::Result<bool> {
    let row = c
        .prepare_cached(store::SELECT_TO_SETTLE)?
        .query_row([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .optional()?;
    let Some((day, reserved, scopes)) = row else {
        return Ok(false);
    };
    let done = c
        .prepare_cached(store::INTERRUPT_REQUEST)?
        .execute(params![status, status, now, id])?;
    if done == 0 {
        return Ok(false);
    }
    for scope in scopes.split(',').filter(|s| !s.is_empty()) {
        c.prepare_cached(store::SPEND_RESERVATION)?
            .execute(params![
                reserved,
                reserved,
                reserved,
                scope,
                period(scope, &day)
            ])?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::parse_url;
    use crate::ledger::sqlite_file::resolve_sqlite_url;
    use std::path::Path;

    #[test]
    fn urls_name_a_file_or_memory() {
        assert_eq!(parse_url("sqlite:data/sluice.db"), Some("data/sluice.db"));
        assert_eq!(parse_url("sqlite://data/x.db?mode=rwc"), Some("data/x.db"));
        assert_eq!(parse_url("sqlite:///tmp/x.db"), Some("/tmp/x.db"));
        assert_eq!(parse_url("sqlite::memory:"), None);
        assert_eq!(parse_url("sqlite://x.db?mode=memory"), None);
    }

    #[test]
    fn relative_files_resolve_against_the_settings_folder() {
        let base = Path::new("/srv/pipelines");
        let r = |url| resolve_sqlite_url(url, base).unwrap();
        assert_eq!(
            r("sqlite:data/sluice.db"),
            "sqlite:/srv/pipelines/data/sluice.db"
        );
        assert_eq!(
            r("sqlite://data/x.db?mode=rwc"),
            "sqlite:/srv/pipelines/data/x.db?mode=rwc"
        );
        assert_eq!(
            r("sqlite:../data/x.db"),
            "sqlite:/srv/pipelines/../data/x.db"
        );
        for unchanged in [
            "sqlite:///tmp/x.db",
            "sqlite:/tmp/x.db",
            "sqlite::memory:",
            "sqlite://x.db?mode=memory",
            "memory",
            "postgres://u:p@h/db",
        ] {
            assert_eq!(r(unchanged), unchanged);
        }
        // A settings file in the working directory: nothing to join.
        assert_eq!(
            resolve_sqlite_url("sqlite:data/x.db", Path::new("")).unwrap(),
            "sqlite:data/x.db"
        );
    }
}
