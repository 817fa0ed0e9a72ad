//! The SQLite ledger's reads (a budget's spend, rows for reports, and the
//! console's, see `console.rs`): on a read-only connection of their own
//! for a ledger in a file (WAL: they never wait for the writer, nor it for
//! them, and each sees every commit answered before it), through the
//! writer thread only for a ledger in memory, which one connection alone
//! can see.

use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::console::{self, AlertFired, Param, RequestFilter, UsageBy, UsageCell};
use super::report::Row;
use super::sqlite::{SqliteStore, report_row};
use super::sqlite_writer::Done;
use super::{LedgerError, Spend, store};

/// A read-only connection to the ledger's file.
pub(super) struct Reader(Mutex<Connection>);

impl Reader {
    pub(super) fn open(path: &str) -> Result<Reader, LedgerError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Reader(Mutex::new(conn)))
    }
}

impl SqliteStore {
    /// Runs `op` on the reader, or in the writer's next batch.
    async fn read<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, LedgerError> {
        match &self.reader {
            Some(reader) => {
                let reader: Arc<Reader> = reader.clone();
                tokio::task::spawn_blocking(move || {
                    let conn = reader.0.lock().unwrap_or_else(|e| e.into_inner());
                    op(&conn).map_err(LedgerError::from)
                })
                .await
                .map_err(|_| LedgerError::Closed)?
            }
            None => self.call(move |c| op(c).map(Done::Keep)).await,
        }
    }

    pub async fn spend(&self, scope: &str, day: &str) -> Result<Spend, LedgerError> {
        let (scope, day) = (scope.to_string(), day.to_string());
        let spend = self
            .read(move |c| {
                c.prepare_cached(store::SELECT_BUDGET)?
                    .query_row(params![scope, day], |r| {
                        Ok(Spend {
                            spent_micros: r.get(0)?,
                            reserved_micros: r.get(1)?,
                        })
                    })
                    .optional()
            })
            .await?;
        Ok(spend.unwrap_or(Spend {
            spent_micros: 0,
            reserved_micros: 0,
        }))
    }

    pub async fn rows_since(&self, since_ms: i64) -> Result<Vec<Row>, LedgerError> {
        self.read(move |c| {
            c.prepare(&store::select_rows(
                "started_at_ms >= ? ORDER BY started_at_ms",
            ))?
            .query_map([since_ms], report_row)?
            .collect()
        })
        .await
    }

    pub async fn rows_of(&self, request_id: &str) -> Result<Vec<Row>, LedgerError> {
        let request_id = request_id.to_string();
        self.read(move |c| {
            c.prepare_cached(&store::select_rows(store::OF_REQUEST_ID))?
                .query_map([&request_id], report_row)?
                .collect()
        })
        .await
    }

    pub async fn usage(
        &self,
        from: &str,
        to: &str,
        by: UsageBy,
    ) -> Result<Vec<UsageCell>, LedgerError> {
        let (from, to) = (from.to_string(), to.to_string());
        let lines = self
            .read(move |c| {
                c.prepare_cached(&console::usage_sql(by))?
                    .query_map(params![from, to, from, to], |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            [
                                r.get(2)?,
                                r.get(3)?,
                                r.get(4)?,
                                r.get(5)?,
                                r.get(6)?,
                                r.get(7)?,
                            ],
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        Ok(console::aggregate(lines))
    }

    pub async fn requests(&self, f: &RequestFilter) -> Result<Vec<Row>, LedgerError> {
        let (filter, params) = console::filter_sql(f);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&store::select_rows(&filter))?;
            for (i, p) in params.iter().enumerate() {
                match p {
                    Param::Int(v) => stmt.raw_bind_parameter(i + 1, v)?,
                    Param::Text(v) => stmt.raw_bind_parameter(i + 1, v)?,
                }
            }
            let mut rows = stmt.raw_query();
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(report_row(r)?);
            }
            Ok(out)
        })
        .await
    }

    pub async fn alerts(&self, day: &str, month: &str) -> Result<Vec<AlertFired>, LedgerError> {
        let (day, month) = (day.to_string(), month.to_string());
        self.read(move |c| {
            c.prepare_cached(console::ALERTS_SQL)?
                .query_map(params![day, month], |r| {
                    Ok(AlertFired {
                        scope: r.get(0)?,
                        period: r.get(1)?,
                        threshold_ppm: r.get(2)?,
                        fired_at_ms: r.get(3)?,
                        delivered: r.get::<_, i64>(4)? != 0,
                    })
                })?
                .collect()
        })
        .await
    }

    pub async fn ttfts(&self, since_ms: i64, limit: i64) -> Result<Vec<i64>, LedgerError> {
        self.read(move |c| {
            c.prepare_cached(console::TTFT_SQL)?
                .query_map(params![since_ms, limit], |r| r.get(0))?
                .collect()
        })
        .await
    }
}
