//! The JSON endpoints behind the console, useful to scripts on their own
//! (docs/console.md): `GET /v1/overview`, `/v1/usage`, `/v1/requests`,
//! `/v1/requests/{request_id}` and `/v1/budgets`. Read-only, from the
//! ledger (`ledger::console`); with keys declared, for admin keys only.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::{ResponseBody, Shared, auth, error_response, json_response, method_not_allowed};
use crate::auth::ApiKey;
use crate::budget::{Budget, OnExhausted};
use crate::ledger::console::{AlertFired, Cursor, MAX_PAGE, RequestFilter, UsageBy};
use crate::ledger::money::{format_usd, utc_day};
use crate::ledger::report::Row;
use crate::ledger::{MONTHLY, period};

/// The longest range `/v1/usage` covers, in days.
const MAX_DAYS: i64 = 400;
/// Requests whose first-token times make the overview's percentiles.
const TTFT_SAMPLE: i64 = 10_000;

/// Whether `path` is one of these endpoints.
pub(super) fn serves(path: &str) -> bool {
    matches!(
        path,
        "/v1/overview" | "/v1/usage" | "/v1/requests" | "/v1/budgets"
    ) || path.starts_with("/v1/requests/")
}

/// Answers `path` (one that [`serves`]) for `caller`: a key that is not
/// an admin gets a 403.
pub(super) async fn answer(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
    caller: Option<&ApiKey>,
    request_id: &str,
) -> Response<ResponseBody> {
    if caller.is_some_and(|k| !k.admin) {
        return auth::refuse(
            shared,
            auth::Denied::Forbidden,
            auth::Api::Native,
            request_id,
        );
    }
    if method != Method::GET {
        return method_not_allowed("GET", request_id);
    }
    let q = Query::parse(query);
    let result = match path {
        "/v1/overview" => overview(shared).await,
        "/v1/usage" => usage(shared, &q).await,
        "/v1/requests" => requests(shared, &q).await,
        "/v1/budgets" => budget_list(shared).await,
        p => {
            let id = &p["/v1/requests/".len()..];
            request(shared, id).await
        }
    };
    match result {
        Ok(v) => json_response(StatusCode::OK, v),
        Err(Fail::Invalid(message)) => error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &message,
            None,
            request_id,
        ),
        Err(Fail::NotFound(message)) => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &message,
            None,
            request_id,
        ),
        Err(Fail::Ledger(e)) => {
            tracing::warn!(error = %e, "the ledger could not answer a console read");
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "ledger_unavailable",
                "the ledger could not be read; try again shortly",
                None,
                request_id,
            )
        }
    }
}

enum Fail {
    Invalid(String),
    NotFound(String),
    Ledger(crate::ledger::LedgerError),
}

impl From<crate::ledger::LedgerError> for Fail {
    fn from(e: crate::ledger::LedgerError) -> Self {
        Fail::Ledger(e)
    }
}

/// The query string's parameters (the last of a repeated one wins).
struct Query(BTreeMap<String, String>);

impl Query {
    fn parse(query: Option<&str>) -> Query {
        let mut map = BTreeMap::new();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.insert(decode(k), decode(v));
        }
        Query(map)
    }

    /// A non-empty value.
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a
/// byte; what is not UTF-8 afterwards is replaced.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn today(shared: &Shared) -> (i64, String) {
    let now = shared.run.ledger.now_ms();
    (now, utc_day(now))
}

/// The UTC day (`YYYY-MM-DD`) `n` days before the instant `now_ms`.
fn days_before(now_ms: i64, n: i64) -> String {
    utc_day(now_ms - n * 86_400_000)
}

fn valid_day(d: &str) -> bool {
    let b = d.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// `GET /v1/usage?days=30&by=pipeline` (or `from=YYYY-MM-DD&to=…`): cost
/// and tokens per day and group, the groups' totals, and the range's.
async fn usage(shared: &Shared, q: &Query) -> Result<Value, Fail> {
    let by = match q.get("by") {
        None => UsageBy::Total,
        Some(b) => UsageBy::parse(b).ok_or_else(|| {
            Fail::Invalid(format!(
                "by=\"{b}\" is not one of total, pipeline, model, key, team"
            ))
        })?,
    };
    let (now, day) = today(shared);
    let (from, to) = match (q.get("from"), q.get("to")) {
        (None, None) => {
            let days: i64 = match q.get("days") {
                None => 30,
                Some(d) => d
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_DAYS).contains(n))
                    .ok_or_else(|| {
                        Fail::Invalid(format!(
                            "days=\"{d}\" must be a whole number from 1 to {MAX_DAYS}"
                        ))
                    })?,
            };
            (days_before(now, days - 1), day.clone())
        }
        (from, to) => {
            let from = from.unwrap_or(day.as_str()).to_string();
            let to = to.unwrap_or(day.as_str()).to_string();
            for d in [&from, &to] {
                if !valid_day(d) {
                    return Err(Fail::Invalid(format!(
                        "\"{d}\" is not a day; expected YYYY-MM-DD (UTC)"
                    )));
                }
            }
            if from > to {
                return Err(Fail::Invalid(format!("from={from} is after to={to}")));
            }
            (from, to)
        }
    };
    let cells = shared.run.ledger.usage(&from, &to, by).await?;
    let mut groups: BTreeMap<&str, [i64; 6]> = BTreeMap::new();
    let mut total = [0i64; 6];
    for c in &cells {
        let g = groups.entry(c.key.as_str()).or_default();
        for (i, v) in [
            c.requests,
            c.errors,
            c.prompt_tokens,
            c.completion_tokens,
            c.cost_micros,
            c.usage_anomalies,
        ]
        .into_iter()
        .enumerate()
        {
            g[i] = g[i].saturating_add(v);
            total[i] = total[i].saturating_add(v);
        }
    }
    let sums = |key: &str, s: &[i64; 6]| {
        json!({
            "key": key,
            "requests": s[0],
            "errors": s[1],
            "prompt_tokens": s[2],
            "completion_tokens": s[3],
            "cost_micros": s[4],
            "cost_usd": format_usd(s[4]),
            "usage_anomalies": s[5],
        })
    };
    let groups: Vec<Value> = groups.iter().map(|(k, s)| sums(k, s)).collect();
    Ok(json!({
        "from": from,
        "to": to,
        "by": by.name(),
        "cells": cells,
        "groups": groups,
        "total": sums("", &total),
    }))
}

/// A ledger row as the endpoints show it.
fn row_json(r: &Row) -> Value {
    json!({
        "id": r.id,
        "request_id": r.request_id,
        "started_at_ms": r.started_at_ms,
        "ended_at_ms": r.ended_at_ms,
        "day": r.day,
        "pipeline": r.pipeline,
        "provider": r.provider,
        "model": r.model,
        "status": r.status,
        "error_code": r.error_code,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "cache_read_tokens": r.cache_read_tokens,
        "cache_write_tokens": r.cache_write_tokens,
        "estimated": r.estimated,
        "reserved_micros": r.reserved_micros,
        "cost_micros": r.cost_micros,
        "cost_usd": format_usd(r.cost_micros),
        "ttft_ms": r.ttft_ms,
        "duration_ms": r.duration_ms,
        "tool_calls": r.tool_calls,
        "usage_anomaly": r.usage_anomaly,
        "api_key": r.api_key,
        "team": r.team,
    })
}

/// `GET /v1/requests?pipeline=&model=&status=&key=&since=1h&limit=50&before=CURSOR`:
/// the most recent rows first; `next` continues the listing.
async fn requests(shared: &Shared, q: &Query) -> Result<Value, Fail> {
    let limit = match q.get("limit") {
        None => 50,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                Fail::Invalid(format!(
                    "limit=\"{l}\" must be a whole number from 1 to {MAX_PAGE}"
                ))
            })?,
    };
    let before = match q.get("before") {
        None => None,
        Some(c) => Some(Cursor::parse(c).ok_or_else(|| {
            Fail::Invalid(format!(
                "before=\"{c}\" is not a cursor (use the last answer's next)"
            ))
        })?),
    };
    let since_ms = match q.get("since") {
        None => None,
        Some(s) => {
            let d = humantime::parse_duration(s).map_err(|_| {
                Fail::Invalid(format!("since=\"{s}\" is not a duration such as 1h or 7d"))
            })?;
            let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            Some(shared.run.ledger.now_ms().saturating_sub(ms))
        }
    };
    let f = RequestFilter {
        pipeline: q.get("pipeline").map(str::to_owned),
        model: q.get("model").map(str::to_owned),
        status: q.get("status").map(str::to_owned),
        api_key: q.get("key").map(str::to_owned),
        since_ms,
        before,
        limit,
    };
    let rows = shared.run.ledger.requests(&f).await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|r| Cursor::of(r).to_string()))
        .flatten();
    Ok(json!({
        "requests": rows.iter().map(row_json).collect::<Vec<_>>(),
        "next": next,
    }))
}

/// `GET /v1/requests/{request_id}`: every ledger row of a request id
/// (a retried or repeated id has several), oldest first.
async fn request(shared: &Shared, id: &str) -> Result<Value, Fail> {
    let id = decode(id);
    let rows = shared.run.ledger.rows_of(&id).await?;
    if rows.is_empty() {
        return Err(Fail::NotFound(format!(
            "the ledger has no request \"{id}\""
        )));
    }
    Ok(json!({
        "request_id": id,
        "rows": rows.iter().map(row_json).collect::<Vec<_>>(),
    }))
}

/// Every budget the configuration declares: the global one, each
/// pipeline's, each key's and each team's (once).
fn declared_budgets(shared: &Shared) -> Vec<(&Budget, String)> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let pipelines = shared.pipelines.values();
    let from_pipelines = pipelines.flat_map(|p| {
        let owner = format!("pipeline {}", p.name);
        p.global_budget
            .iter()
            .map(|b| (b, "global".to_string()))
            .chain(p.budget.iter().map(move |b| (b, owner.clone())))
    });
    let mut keys: Vec<&Arc<ApiKey>> = shared.auth.keys().collect();
    keys.sort_by(|a, b| a.name.cmp(&b.name));
    let from_keys = keys.into_iter().flat_map(|k| {
        k.budgets.iter().map(move |b| {
            let owner = match b.scope.strip_prefix("team:") {
                Some(_) => format!("team {}", k.team.as_deref().unwrap_or("")),
                None => format!("key {}", k.name),
            };
            (b, owner)
        })
    });
    for (b, owner) in from_pipelines.chain(from_keys) {
        if seen.insert(b.scope.clone()) {
            out.push((b, owner));
        }
    }
    out
}

/// `GET /v1/budgets`.
async fn budget_list(shared: &Shared) -> Result<Value, Fail> {
    let (_, day) = today(shared);
    let fired = shared.run.ledger.alerts(&day).await?;
    Ok(json!({ "budgets": budgets(shared, &day, &fired).await? }))
}

/// Each budget's spent and reserved in its current period (`day`'s)
/// against its limit, its alert thresholds and those of `fired` that are
/// its.
async fn budgets(shared: &Shared, day: &str, fired: &[AlertFired]) -> Result<Vec<Value>, Fail> {
    let mut out = Vec::new();
    for (b, owner) in declared_budgets(shared) {
        let p = period(&b.scope, day);
        let spend = shared.run.ledger.spend(&b.scope, p).await?;
        let used = spend.spent_micros.saturating_add(spend.reserved_micros);
        let ppm = |m: i64| {
            if b.limit_micros > 0 {
                (i128::from(m) * 1_000_000 / i128::from(b.limit_micros)) as i64
            } else {
                0
            }
        };
        out.push(json!({
            "scope": b.scope,
            "owner": owner,
            "period": b.period_name(),
            "period_key": p,
            "limit_micros": b.limit_micros,
            "limit_usd": format_usd(b.limit_micros),
            "spent_micros": spend.spent_micros,
            "spent_usd": format_usd(spend.spent_micros),
            "reserved_micros": spend.reserved_micros,
            "used_ppm": ppm(used),
            "spent_ppm": ppm(spend.spent_micros),
            "alert_at_ppm": b.alert_at_ppm,
            "alerts_fired_ppm": fired
                .iter()
                .filter(|a| a.scope == b.scope && a.period == p)
                .map(|a| a.threshold_ppm)
                .collect::<Vec<_>>(),
            "on_exhausted": match &b.on_exhausted {
                OnExhausted::Reject => "reject".to_string(),
                OnExhausted::Downgrade(d) => format!("downgrade to {}/{}", d.provider_name, d.model),
            },
        }));
    }
    Ok(out)
}

/// `GET /v1/overview`: today (UTC) at a glance.
async fn overview(shared: &Shared) -> Result<Value, Fail> {
    let (now, day) = today(shared);
    let cells = shared.run.ledger.usage(&day, &day, UsageBy::Total).await?;
    let t = cells.first();
    let get = |f: fn(&crate::ledger::console::UsageCell) -> i64| t.map_or(0, f);
    let mut ttft = shared
        .run
        .ledger
        .ttfts(now - now.rem_euclid(86_400_000), TTFT_SAMPLE)
        .await?;
    ttft.sort_unstable();
    let pct = |p: f64| {
        (!ttft.is_empty()).then(|| {
            let rank = ((p * ttft.len() as f64).ceil() as usize).clamp(1, ttft.len());
            ttft[rank - 1]
        })
    };
    let alerts = shared.run.ledger.alerts(&day).await?;
    Ok(json!({
        "day": day,
        "month": period(MONTHLY, &day),
        "requests": get(|c| c.requests),
        "errors": get(|c| c.errors),
        "prompt_tokens": get(|c| c.prompt_tokens),
        "completion_tokens": get(|c| c.completion_tokens),
        "cost_micros": get(|c| c.cost_micros),
        "cost_usd": format_usd(get(|c| c.cost_micros)),
        "ttft_p50_ms": pct(0.50),
        "ttft_p95_ms": pct(0.95),
        "ttft_sample": ttft.len(),
        "streaming_now": shared.run.metrics.streams_now.get().max(0),
        "budgets": budgets(shared, &day, &alerts).await?,
        "alerts": alerts,
        "ledger": shared.run.ledger.backend(),
        "config_version": shared.version,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded_without_panicking() {
        assert_eq!(decode("a+b%20c"), "a b c");
        assert_eq!(decode("%E2%82%AC"), "€");
        // Broken escapes stay as they are; a cut character is replaced.
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(decode("%E2%82"), "\u{FFFD}");
        assert_eq!(decode("é%41"), "éA");
        let q = Query::parse(Some("pipeline=a%2Fb&status=&limit=5&limit=7&flag"));
        assert_eq!(q.get("pipeline"), Some("a/b"));
        assert_eq!(q.get("status"), None);
        assert_eq!(q.get("limit"), Some("7"));
        assert_eq!(q.get("flag"), None);
        assert!(valid_day("2026-12-07"));
        assert!(!valid_day("2026-12-7") && !valid_day("2026/12/07") && !valid_day("2026-12-0x"));
    }
}
