//! The ledger: one row per request, and the budgets that rows spend.
//!
//! A request is recorded *before* its provider is called (status
//! `pending`, with its budget reservation) and settled when it ends, so a
//! crash can never hide spend: rows left pending by a dead instance are
//! marked `interrupted` at the next start and their reservation counts as
//! spent. Check-and-reserve is one transaction with a conditional UPDATE,
//! so no interleaving of requests (or of instances sharing Postgres) can
//! spend past a budget.

pub mod console;
mod memory;
pub mod money;
mod postgres;
pub mod rate;
pub mod report;
mod sqlite;
mod sqlite_file;
mod sqlite_reader;
mod sqlite_writer;
mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use thiserror::Error;

pub use money::{CacheUse, Micros, Price};
pub use sqlite_file::resolve_sqlite_url;
use store::Store;

#[derive(Debug, Error)]
pub enum LedgerError {
    #[error(
        "ledger storage url \"{0}\" is not supported, expected sqlite:PATH, postgres://... or memory"
    )]
    BadUrl(String),
    #[error("ledger database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("ledger database error: {0}")]
    Sqlite(String),
    #[error("the ledger is closed")]
    Closed,
    #[error("ledger migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the ledger's schema is at version {found}, newer than this Sluice knows (up to {known}): \
         a newer Sluice upgraded it; run that version or a later one, or restore the ledger \
         from a backup taken before the upgrade"
    )]
    NewerSchema { found: i64, known: i64 },
}

/// A budget a request must fit in: `global`, `pipeline:NAME`, `key:NAME`
/// or `team:NAME` for a UTC day, the same with [`MONTHLY`] appended for a
/// UTC calendar month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub key: String,
    pub limit_micros: Micros,
}

/// The suffix of a monthly budget's scope (`key:ci@month`).
pub const MONTHLY: &str = "@month";

/// The period a scope's spend is kept under on `day` (`YYYY-MM-DD`): the
/// day itself, or its month (`YYYY-MM`) for a monthly scope.
pub fn period<'a>(scope: &str, day: &'a str) -> &'a str {
    if scope.ends_with(MONTHLY) {
        day.get(..7).unwrap_or(day)
    } else {
        day
    }
}

/// What is known of a request before its provider is called.
#[derive(Debug, Clone)]
pub struct Opening {
    /// The row's own identity, unique ([`new_row_id`]).
    pub id: String,
    /// The id clients see (their `X-Request-Id`, or one Sluice made up):
    /// kept, indexed and logged, but not unique, since a client that retries
    /// sends the same one again.
    pub request_id: String,
    pub pipeline: String,
    pub provider: String,
    pub model: String,
    /// The API key that called (its declared name) and its team.
    pub api_key: Option<String>,
    pub team: Option<String>,
    /// Upper bound of what the call may cost; reserved on every scope.
    pub reserve_micros: Micros,
    pub scopes: Vec<Scope>,
    /// What the request takes from each rate limit that applies.
    pub rates: Vec<rate::RateCharge>,
}

/// The answer to an opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    Admitted,
    /// The scope that cannot afford the reservation.
    Exhausted {
        scope: String,
        limit_micros: Micros,
        spent_micros: Micros,
    },
    /// The rate limit that cannot take the request now, and how it stands.
    RateLimited {
        bucket: String,
        standing: rate::Standing,
    },
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub status: &'static str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Of `prompt_tokens`, read from and written to the prompt cache.
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// Of `cache_write_tokens`, written for an hour.
    pub cache_write_1h_tokens: u64,
    pub estimated: bool,
    pub cost_micros: Micros,
    pub ttft_ms: Option<i64>,
    pub duration_ms: i64,
    pub tool_calls: u32,
    pub error_code: Option<&'static str>,
    /// The provider and model that actually answered (after a downgrade or
    /// a fallback).
    pub provider: String,
    pub model: String,
    /// Why the provider's usage could not be believed, with the figures it
    /// reported (see `run::usage_check`); the tokens and cost above are
    /// then the bounds the request allowed.
    pub usage_anomaly: Option<String>,
}

/// What a settlement left behind: the row's day and each scope's spend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    pub day: String,
    pub spends: Vec<(String, Spend)>,
}

/// Spend of one scope on one day, after a settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spend {
    pub spent_micros: Micros,
    pub reserved_micros: Micros,
}

pub struct Ledger {
    store: Store,
    instance: String,
    /// The time requests are recorded at (their day and month), in unix
    /// milliseconds; [`CLOCK_SYSTEM`]: the system's.
    clock: AtomicI64,
}

/// The ledger's clock follows the system's.
const CLOCK_SYSTEM: i64 = i64::MIN;

/// A fresh row identity for [`Opening::id`]: a UUIDv7, so that the rows
/// of one process sort by id in the order they were made (the latest row of
/// a repeated request id is the last one even within one millisecond).
pub fn new_row_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `url`, runs the embedded
    /// migrations, and registers this instance.
    pub async fn open(url: &str) -> Result<Arc<Ledger>, LedgerError> {
        let store = Store::connect(url).await?;
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let ledger = Ledger {
            store,
            instance,
            clock: AtomicI64::new(CLOCK_SYSTEM),
        };
        ledger.heartbeat().await?;
        Ok(Arc::new(ledger))
    }

    /// The time requests are recorded at, in unix milliseconds: the
    /// system's, unless [`Ledger::set_clock`] fixed it.
    pub fn now_ms(&self) -> i64 {
        match self.clock.load(Ordering::Relaxed) {
            CLOCK_SYSTEM => money::now_ms(),
            fixed => fixed,
        }
    }

    /// Fixes the time requests are recorded at (None: the system's again),
    /// so that tests can cross a UTC day or month. Liveness of instances
    /// (heartbeats, recovery) always uses the system's.
    pub fn set_clock(&self, ms: Option<i64>) {
        self.clock
            .store(ms.unwrap_or(CLOCK_SYSTEM), Ordering::Relaxed);
    }

    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    /// Marks this instance alive; pending rows of instances not seen for
    /// `INSTANCE_TIMEOUT_MS` (30 s) are orphans.
    pub async fn heartbeat(&self) -> Result<(), LedgerError> {
        self.store.heartbeat(&self.instance, money::now_ms()).await
    }

    /// Settles the rows that dead instances left pending: status
    /// `interrupted`, reservation counted as spent. Returns how many.
    pub async fn recover_interrupted(&self) -> Result<u64, LedgerError> {
        self.store.recover(&self.instance, money::now_ms()).await
    }

    /// Records a request before its provider is called, reserving its
    /// worst-case cost on every scope in one atomic step. When a scope
    /// cannot afford it, nothing is reserved or recorded: the caller may try
    /// a cheaper model, or record the rejection with [`Ledger::record_rejected`].
    pub async fn open_request(&self, o: &Opening) -> Result<Admit, LedgerError> {
        let now = self.now_ms();
        self.store
            .open(&self.instance, o, now, &money::utc_day(now))
            .await
    }

    /// Records a request that never reached a provider (e.g. an invalid body).
    pub async fn record_rejected(
        &self,
        o: &Opening,
        status: &str,
        error_code: &str,
    ) -> Result<(), LedgerError> {
        let now = self.now_ms();
        self.store
            .record_rejected(
                &self.instance,
                o,
                now,
                &money::utc_day(now),
                status,
                error_code,
            )
            .await
    }

    /// Settles a pending row: releases its reservation and adds its cost to
    /// every scope. Returns each scope's spend afterwards (nothing when the
    /// row was already settled).
    ///
    /// A budgeted row is never charged more than it reserved: the
    /// reservation is the most the request could honestly cost, and was
    /// admitted within the budget, so settling can never push a budget past
    /// its limit. A cost above it is charged at the reservation and the row
    /// is flagged (`usage_anomaly`).
    pub async fn settle(&self, id: &str, s: &Settlement) -> Result<Settled, LedgerError> {
        self.store.settle(id, s, self.now_ms()).await
    }

    /// The settlement of last resort, for a row whose [`Ledger::settle`]
    /// kept failing: status and error code `settle_failed`, its reservation
    /// counted as its cost (which never under-counts). It uses nothing of
    /// the settlement that failed, only what the row holds. Returns whether
    /// the row was still pending.
    pub async fn settle_failed(&self, id: &str) -> Result<bool, LedgerError> {
        self.store.settle_failed(id, self.now_ms()).await
    }

    /// Settles every row this instance still has pending as `interrupted`
    /// (reservation counted as spent). Called at shutdown once every request
    /// task has ended, so that no row waits for the next start. Returns how
    /// many.
    pub async fn interrupt_own_pending(&self) -> Result<u64, LedgerError> {
        self.store
            .interrupt_pending_of(&self.instance, money::now_ms())
            .await
    }

    /// Records that an alert threshold fired; false if it had already fired
    /// for this scope and day (so it must not fire again).
    pub async fn claim_alert(
        &self,
        scope: &str,
        day: &str,
        threshold_ppm: i64,
    ) -> Result<bool, LedgerError> {
        self.store
            .claim_alert(scope, day, threshold_ppm, self.now_ms())
            .await
    }

    pub async fn mark_alert_delivered(
        &self,
        scope: &str,
        day: &str,
        threshold_ppm: i64,
    ) -> Result<(), LedgerError> {
        self.store
            .mark_alert_delivered(scope, day, threshold_ppm)
            .await
    }

    pub async fn spend(&self, scope: &str, day: &str) -> Result<Spend, LedgerError> {
        self.store.spend(scope, day).await
    }

    /// Rows started at or after `since_ms`, for reports.
    pub async fn rows_since(&self, since_ms: i64) -> Result<Vec<report::Row>, LedgerError> {
        self.store.rows_since(since_ms).await
    }

    /// The latest row of a client's request id (`X-Request-Id`); a client
    /// that sent the same id twice has several.
    pub async fn row(&self, request_id: &str) -> Result<Option<report::Row>, LedgerError> {
        Ok(self.rows_of(request_id).await?.pop())
    }

    /// Every row of a client's request id, oldest first.
    pub async fn rows_of(&self, request_id: &str) -> Result<Vec<report::Row>, LedgerError> {
        self.store.rows_of(request_id).await
    }

    /// Usage of the days `from..=to` (UTC, `YYYY-MM-DD`) by day and group.
    pub async fn usage(
        &self,
        from: &str,
        to: &str,
        by: console::UsageBy,
    ) -> Result<Vec<console::UsageCell>, LedgerError> {
        self.store.usage(from, to, by).await
    }

    /// The rows `f` selects, newest first.
    pub async fn requests(
        &self,
        f: &console::RequestFilter,
    ) -> Result<Vec<report::Row>, LedgerError> {
        self.store.requests(f).await
    }

    /// The alert thresholds fired on `day` (and, for monthly budgets, in
    /// its month).
    pub async fn alerts(&self, day: &str) -> Result<Vec<console::AlertFired>, LedgerError> {
        self.store.alerts(day, period(MONTHLY, day)).await
    }

    /// First-token times (ms) of the latest `limit` requests started at or
    /// after `since_ms`.
    pub async fn ttfts(&self, since_ms: i64, limit: i64) -> Result<Vec<i64>, LedgerError> {
        self.store.ttfts(since_ms, limit).await
    }

    pub async fn close(&self) {
        self.store.close().await;
    }
}

#[cfg(test)]
#[path = "ledger_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "bounds_tests.rs"]
mod bounds_tests;
