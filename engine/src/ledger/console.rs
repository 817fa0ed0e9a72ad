//! What the console and its JSON endpoints read from the ledger: usage by
//! day and group, the recent requests (filtered, newest first, page by
//! page), and the alerts fired in a period.
//!
//! Usage comes from `usage_days` (migration 0007), which triggers keep
//! equal to a sum over `requests` in the same transaction as every change
//! to it, so a month of a million-row ledger is read from a few thousand
//! rows. The recent requests walk an index on `started_at_ms` (alone, or
//! after the pipeline, the model or the status filtered on). On SQLite
//! these reads go through a read-only connection of their own, never
//! through the writer thread, so a console left open costs the request
//! path nothing but the disk cache.

use std::collections::BTreeMap;

use serde::Serialize;

use super::money::format_usd;
use super::report::Row;

/// What usage is grouped by, beside the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageBy {
    /// One group per day (its key is empty).
    Total,
    Pipeline,
    /// `provider/model`, as `sluice usage --by model` shows it.
    Model,
    /// The key's name; `-` for requests made without a key.
    Key,
    /// The key's team; `-` for requests without one.
    Team,
}

impl UsageBy {
    pub fn parse(s: &str) -> Option<UsageBy> {
        Some(match s {
            "total" | "" => UsageBy::Total,
            "pipeline" => UsageBy::Pipeline,
            "model" => UsageBy::Model,
            "key" => UsageBy::Key,
            "team" => UsageBy::Team,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            UsageBy::Total => "total",
            UsageBy::Pipeline => "pipeline",
            UsageBy::Model => "model",
            UsageBy::Key => "key",
            UsageBy::Team => "team",
        }
    }

    /// The group's key as an expression over `usage_days`.
    fn sql(self) -> &'static str {
        match self {
            UsageBy::Total => "''",
            UsageBy::Pipeline => "pipeline",
            UsageBy::Model => "provider || '/' || model",
            UsageBy::Key => "CASE COALESCE(api_key, '') WHEN '' THEN '-' ELSE api_key END",
            UsageBy::Team => "CASE COALESCE(team, '') WHEN '' THEN '-' ELSE team END",
        }
    }

    fn of(self, r: &Row) -> String {
        match self {
            UsageBy::Total => String::new(),
            UsageBy::Pipeline => r.pipeline.clone(),
            UsageBy::Model => format!("{}/{}", r.provider, r.model),
            UsageBy::Key => r.api_key.clone().unwrap_or_else(|| "-".into()),
            UsageBy::Team => r.team.clone().unwrap_or_else(|| "-".into()),
        }
    }
}

/// One day of one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageCell {
    pub day: String,
    pub key: String,
    pub requests: i64,
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_micros: i64,
    pub cost_usd: String,
    pub usage_anomalies: i64,
}

/// The usage of the days `from..=to` (`YYYY-MM-DD`, UTC), one line per
/// stored cell: the ended requests' totals kept in `usage_days`, and the
/// pending rows (the requests in flight) from `requests` through its
/// partial index; [`aggregate`] sums them by day and group (with saturating
/// additions: a SQL `SUM` would fail on absurd amounts). Binds `from, to,
/// from, to`.
pub(super) fn usage_sql(by: UsageBy) -> String {
    let pos = |c: &str| format!("CASE WHEN {c} > 0 THEN {c} ELSE 0 END");
    format!(
        "SELECT day, {key}, requests, errors, prompt_tokens, completion_tokens, cost_micros, \
         usage_anomalies FROM usage_days WHERE day >= ? AND day <= ? \
         UNION ALL \
         SELECT day, {key}, 1, 0, {p}, {c}, {m}, \
         CASE WHEN usage_anomaly IS NULL THEN 0 ELSE 1 END \
         FROM requests WHERE status = 'pending' AND day >= ? AND day <= ?",
        key = by.sql(),
        p = pos("prompt_tokens"),
        c = pos("completion_tokens"),
        m = pos("cost_micros"),
    )
}

/// Sums lines of `(day, group, [requests, errors, prompt, completion,
/// cost, anomalies])` into cells, ordered by day and group; a cell with no
/// request is left out.
pub(super) fn aggregate(
    lines: impl IntoIterator<Item = (String, String, [i64; 6])>,
) -> Vec<UsageCell> {
    let mut cells: BTreeMap<(String, String), [i64; 6]> = BTreeMap::new();
    for (day, key, v) in lines {
        let c = cells.entry((day, key)).or_default();
        for (sum, v) in c.iter_mut().zip(v) {
            *sum = sum.saturating_add(v.max(0));
        }
    }
    cells
        .into_iter()
        .filter(|(_, c)| c[0] > 0)
        .map(|((day, key), c)| UsageCell {
            day,
            key,
            requests: c[0],
            errors: c[1],
            prompt_tokens: c[2],
            completion_tokens: c[3],
            cost_micros: c[4],
            cost_usd: format_usd(c[4]),
            usage_anomalies: c[5],
        })
        .collect()
}

/// The same cells computed from rows (the in-memory ledger), with
/// `sluice usage`'s rules.
pub fn usage_of_rows(rows: &[Row], from: &str, to: &str, by: UsageBy) -> Vec<UsageCell> {
    aggregate(
        rows.iter()
            .filter(|r| r.day.as_str() >= from && r.day.as_str() <= to)
            .map(|r| {
                let error = !matches!(r.status.as_str(), "ok" | "ceiling" | "pending");
                (
                    r.day.clone(),
                    by.of(r),
                    [
                        1,
                        i64::from(error),
                        r.prompt_tokens,
                        r.completion_tokens,
                        r.cost_micros,
                        i64::from(r.usage_anomaly.is_some()),
                    ],
                )
            }),
    )
}

/// Which requests to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFilter {
    pub pipeline: Option<String>,
    /// The model that answered (without its provider).
    pub model: Option<String>,
    pub status: Option<String>,
    pub api_key: Option<String>,
    /// Started at or after this (unix ms).
    pub since_ms: Option<i64>,
    /// Only rows before this one in the listing's order (the last row of
    /// the previous page).
    pub before: Option<Cursor>,
    pub limit: usize,
}

/// A place in the listing: a row's start time and identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub started_at_ms: i64,
    pub id: String,
}

impl Cursor {
    /// `MS-ID`, as the JSON endpoint hands it out.
    pub fn parse(s: &str) -> Option<Cursor> {
        let (ms, id) = s.split_once('-')?;
        Some(Cursor {
            started_at_ms: ms.parse().ok()?,
            id: id.to_string(),
        })
    }

    pub fn of(r: &Row) -> Cursor {
        Cursor {
            started_at_ms: r.started_at_ms,
            id: r.id.clone(),
        }
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.started_at_ms, self.id)
    }
}

/// The most rows one page lists.
pub const MAX_PAGE: usize = 500;

/// The filter as a `WHERE … ORDER BY … LIMIT` clause over `requests`
/// (`?` placeholders), with its parameters in order: times as integers,
/// names as text.
pub(super) fn filter_sql(f: &RequestFilter) -> (String, Vec<Param>) {
    let mut conds = Vec::new();
    let mut params = Vec::new();
    if let Some(c) = &f.before {
        conds.push("(started_at_ms < ? OR (started_at_ms = ? AND id < ?))");
        params.push(Param::Int(c.started_at_ms));
        params.push(Param::Int(c.started_at_ms));
        params.push(Param::Text(c.id.clone()));
    }
    if let Some(ms) = f.since_ms {
        conds.push("started_at_ms >= ?");
        params.push(Param::Int(ms));
    }
    for (column, value) in [
        ("pipeline", &f.pipeline),
        ("model", &f.model),
        ("status", &f.status),
        ("api_key", &f.api_key),
    ] {
        if let Some(v) = value {
            conds.push(match column {
                "pipeline" => "pipeline = ?",
                "model" => "model = ?",
                "status" => "status = ?",
                _ => "api_key = ?",
            });
            params.push(Param::Text(v.clone()));
        }
    }
    let filter = if conds.is_empty() {
        "1 = 1".to_string()
    } else {
        conds.join(" AND ")
    };
    let limit = f.limit.clamp(1, MAX_PAGE);
    (
        format!("{filter} ORDER BY started_at_ms DESC, id DESC LIMIT {limit}"),
        params,
    )
}

/// A bound parameter of [`filter_sql`].
#[derive(Debug, Clone)]
pub(super) enum Param {
    Int(i64),
    Text(String),
}

/// The same listing over rows (the in-memory ledger).
pub fn filter_rows(mut rows: Vec<Row>, f: &RequestFilter) -> Vec<Row> {
    rows.retain(|r| {
        f.before.as_ref().is_none_or(|c| {
            r.started_at_ms < c.started_at_ms || (r.started_at_ms == c.started_at_ms && r.id < c.id)
        }) && f.since_ms.is_none_or(|ms| r.started_at_ms >= ms)
            && f.pipeline.as_ref().is_none_or(|v| &r.pipeline == v)
            && f.model.as_ref().is_none_or(|v| &r.model == v)
            && f.status.as_ref().is_none_or(|v| &r.status == v)
            && f.api_key
                .as_ref()
                .is_none_or(|v| r.api_key.as_ref() == Some(v))
    });
    rows.sort_by(|a, b| (b.started_at_ms, &b.id).cmp(&(a.started_at_ms, &a.id)));
    rows.truncate(f.limit.clamp(1, MAX_PAGE));
    rows
}

/// An alert threshold that fired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertFired {
    pub scope: String,
    /// The day, or the month of a monthly budget.
    pub period: String,
    pub threshold_ppm: i64,
    pub fired_at_ms: i64,
    pub delivered: bool,
}

pub(super) const ALERTS_SQL: &str = "SELECT scope, day, threshold_ppm, fired_at_ms, delivered \
     FROM alerts_fired WHERE day = ? OR day = ? ORDER BY fired_at_ms, scope, threshold_ppm";

/// The first-token times of the latest `limit` requests started at or
/// after `since_ms`.
pub(super) const TTFT_SQL: &str = "SELECT ttft_ms FROM requests \
     WHERE started_at_ms >= ? AND ttft_ms IS NOT NULL ORDER BY started_at_ms DESC LIMIT ?";
