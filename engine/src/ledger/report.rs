//! Usage reports from ledger rows: `sluice usage`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::money::{Micros, format_usd};

/// One ledger row, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The row's own identity.
    pub id: String,
    /// The client's `X-Request-Id` (or the one Sluice made up); not unique.
    pub request_id: String,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub day: String,
    pub pipeline: String,
    pub provider: String,
    pub model: String,
    pub status: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub estimated: bool,
    pub reserved_micros: Micros,
    pub cost_micros: Micros,
    pub ttft_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    pub tool_calls: i64,
    pub error_code: Option<String>,
    /// Why the provider's usage was not believed (see `run::usage_check`).
    pub usage_anomaly: Option<String>,
    /// Of `prompt_tokens`, read from and written to the prompt cache.
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    /// The API key that called (its declared name) and its team.
    pub api_key: Option<String>,
    pub team: Option<String>,
    /// Of `cache_write_tokens`, written for an hour.
    pub cache_write_1h_tokens: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Pipeline,
    Model,
    Day,
    Key,
    Team,
}

/// Totals of one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub key: String,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_micros: Micros,
    pub cost_usd: String,
    pub ttft_p50_ms: Option<i64>,
    pub ttft_p95_ms: Option<i64>,
    /// Rows whose provider usage was flagged as impossible.
    pub usage_anomalies: u64,
}

/// A sum of stored amounts that cannot overflow, and never goes negative:
/// ledgers written before usage was checked may hold negative counts.
fn total(values: impl Iterator<Item = i64>) -> i64 {
    values.fold(0, |sum: i64, v| sum.saturating_add(v.max(0)))
}

/// Statuses that mean the request did what was asked.
fn is_success(status: &str) -> bool {
    matches!(status, "ok" | "ceiling" | "pending")
}

fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank.
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

pub fn summarize(rows: &[Row], by: GroupBy) -> Vec<Group> {
    let mut groups: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        let key = match by {
            GroupBy::Pipeline => r.pipeline.clone(),
            GroupBy::Model => format!("{}/{}", r.provider, r.model),
            GroupBy::Day => r.day.clone(),
            // Rows of requests made without a key (or a key of no team).
            GroupBy::Key => r.api_key.clone().unwrap_or_else(|| "-".into()),
            GroupBy::Team => r.team.clone().unwrap_or_else(|| "-".into()),
        };
        groups.entry(key).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|(key, rows)| {
            let requests = rows.len() as u64;
            let errors = rows.iter().filter(|r| !is_success(&r.status)).count() as u64;
            let mut ttft: Vec<i64> = rows.iter().filter_map(|r| r.ttft_ms).collect();
            ttft.sort_unstable();
            let cost: Micros = total(rows.iter().map(|r| r.cost_micros));
            Group {
                key,
                requests,
                errors,
                error_rate: if requests == 0 {
                    0.0
                } else {
                    errors as f64 / requests as f64
                },
                prompt_tokens: total(rows.iter().map(|r| r.prompt_tokens)),
                completion_tokens: total(rows.iter().map(|r| r.completion_tokens)),
                cost_micros: cost,
                cost_usd: format_usd(cost),
                ttft_p50_ms: percentile(&ttft, 0.50),
                ttft_p95_ms: percentile(&ttft, 0.95),
                usage_anomalies: rows.iter().filter(|r| r.usage_anomaly.is_some()).count() as u64,
            }
        })
        .collect()
}

/// A table for people.
pub fn render_table(groups: &[Group], by: GroupBy) -> String {
    let head = match by {
        GroupBy::Pipeline => "pipeline",
        GroupBy::Model => "model",
        GroupBy::Day => "day",
        GroupBy::Key => "key",
        GroupBy::Team => "team",
    };
    let ms = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    let mut lines = vec![[
        head.to_string(),
        "requests".into(),
        "errors".into(),
        "prompt".into(),
        "completion".into(),
        "cost_usd".into(),
        "ttft_p50_ms".into(),
        "ttft_p95_ms".into(),
        "usage_flagged".into(),
    ]];
    for g in groups {
        lines.push([
            g.key.clone(),
            g.requests.to_string(),
            format!("{} ({:.1}%)", g.errors, g.error_rate * 100.0),
            g.prompt_tokens.to_string(),
            g.completion_tokens.to_string(),
            g.cost_usd.clone(),
            ms(g.ttft_p50_ms),
            ms(g.ttft_p95_ms),
            g.usage_anomalies.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..9)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pipeline: &str, status: &str, cost: i64, ttft: Option<i64>) -> Row {
        Row {
            id: "x".into(),
            request_id: "x".into(),
            started_at_ms: 0,
            ended_at_ms: Some(1),
            day: "2026-11-27".into(),
            pipeline: pipeline.into(),
            provider: "p".into(),
            model: "m".into(),
            status: status.into(),
            prompt_tokens: 10,
            completion_tokens: 5,
            estimated: false,
            reserved_micros: 0,
            cost_micros: cost,
            ttft_ms: ttft,
            duration_ms: Some(10),
            tool_calls: 0,
            error_code: None,
            usage_anomaly: None,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            api_key: None,
            team: None,
            cache_write_1h_tokens: 0,
        }
    }

    #[test]
    fn groups_total_cost_errors_and_ttft_percentiles() {
        let mut rows: Vec<Row> = (1..=20).map(|i| row("a", "ok", 10, Some(i))).collect();
        rows.push(row("a", "timeout", 3, None));
        rows.push(row("b", "budget_rejected", 0, None));
        let g = summarize(&rows, GroupBy::Pipeline);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].requests, 21);
        assert_eq!(g[0].errors, 1);
        assert_eq!(g[0].cost_micros, 203);
        assert_eq!(g[0].ttft_p50_ms, Some(10));
        assert_eq!(g[0].ttft_p95_ms, Some(19));
        assert_eq!(g[1].ttft_p50_ms, None);
        let table = render_table(&g, GroupBy::Pipeline);
        assert!(table.starts_with("pipeline"));
        assert!(table.contains("0.000203"));
    }
}

#[cfg(test)]
mod extremes {
    use super::*;

    #[test]
    fn totals_saturate_and_never_show_negative_counts() {
        let base = Row {
            id: "a".into(),
            request_id: "r".into(),
            started_at_ms: 0,
            ended_at_ms: Some(1),
            day: "2026-11-27".into(),
            pipeline: "p".into(),
            provider: "prov".into(),
            model: "m".into(),
            status: "ok".into(),
            prompt_tokens: i64::MAX,
            completion_tokens: i64::MAX,
            estimated: false,
            reserved_micros: 0,
            cost_micros: i64::MAX,
            ttft_ms: Some(7),
            duration_ms: Some(1),
            tool_calls: 0,
            error_code: None,
            usage_anomaly: Some("completion_tokens 18446744073709551615".into()),
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            api_key: None,
            team: None,
            cache_write_1h_tokens: 0,
        };
        // A row written by an older Sluice that wrapped u64::MAX to -1.
        let wrapped = Row {
            prompt_tokens: -1,
            completion_tokens: -1,
            cost_micros: -5,
            usage_anomaly: None,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            cache_write_1h_tokens: 0,
            ..base.clone()
        };
        let g = summarize(&[base.clone(), base, wrapped.clone()], GroupBy::Pipeline);
        assert_eq!(g[0].prompt_tokens, i64::MAX);
        assert_eq!(g[0].completion_tokens, i64::MAX);
        assert_eq!(g[0].cost_micros, i64::MAX);
        assert_eq!(g[0].usage_anomalies, 2);
        let g = summarize(&[wrapped], GroupBy::Pipeline);
        assert_eq!((g[0].prompt_tokens, g[0].completion_tokens), (0, 0));
        assert_eq!(g[0].cost_micros, 0);
        let table = render_table(&g, GroupBy::Pipeline);
        assert!(!table.contains('-'), "{table}");
        assert!(table.lines().next().unwrap().ends_with("usage_flagged"));
    }
}
