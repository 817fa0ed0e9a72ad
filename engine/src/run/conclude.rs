//! The end of a request: settle its ledger row (whatever happens to the
//! ledger), update the metrics, fire budget and usage alerts, and log the
//! request's one summary line.

use std::time::Duration;

use tracing::{error, info, warn};

use super::events::{ErrorCode, Status};
use super::{RunContext, Tally, Target};
use crate::budget::Budget;
use crate::compile::Pipeline;
use crate::ledger::{Settled, Settlement};
use crate::metrics::{
    AnomalyLabels, CostLabels, ModelLabels, RequestLabels, ScopeLabels, TokenLabels,
};

/// Tries of a settlement before the row is settled as `settle_failed`,
/// and the wait before the second (multiplied by four for each next one).
const SETTLE_ATTEMPTS: u32 = 3;
const SETTLE_BACKOFF: Duration = Duration::from_millis(100);

/// Settles `row` with `s`, retrying with backoff; when that keeps failing,
/// settles it as `settle_failed` (its reservation counted as spent) with
/// nothing of `s`, which is what may have made it fail. None when the real
/// settlement could not be recorded. A row that even that leaves pending is
/// settled as `interrupted` at shutdown, or by the next start.
async fn settle(cx: &RunContext, row: &str, s: &Settlement) -> Option<Settled> {
    let mut backoff = SETTLE_BACKOFF;
    for attempt in 1..=SETTLE_ATTEMPTS {
        match cx.ledger.settle(row, s).await {
            Ok(settled) => return Some(settled),
            Err(e) => warn!(attempt, error = %e, "cannot settle the request in the ledger"),
        }
        if attempt < SETTLE_ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 4;
        }
    }
    match cx.ledger.settle_failed(row).await {
        Ok(_) => error!(
            "settling the request kept failing; its row is settled as settle_failed and its reservation counts as spent"
        ),
        Err(e) => {
            error!(error = %e, "cannot settle the request even as settle_failed; it stays pending until shutdown or the next start")
        }
    }
    None
}

/// Settles the ledger row, updates the metrics, fires budget and usage
/// alerts and logs the request's one summary line.
#[allow(clippy::too_many_arguments)]
pub(super) async fn conclude(
    cx: &RunContext,
    pipeline: &Pipeline,
    target: &Target,
    row: &str,
    tally: &Tally,
    status: Status,
    finish: &str,
    error_code: Option<ErrorCode>,
    budgets: &[&Budget],
    key: &str,
) {
    let usage = tally.usage();
    let (anomalies, usage_anomaly) = tally.usage_anomalies();
    let ttft = tally
        .first_token_at
        .map(|t| t.duration_since(tally.started));
    let duration = tally.started.elapsed();
    let settlement = Settlement {
        status: status.as_str(),
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        cache_read_tokens: usage.cache_read_tokens,
        cache_write_tokens: usage.cache_write_tokens,
        cache_write_1h_tokens: usage.cache_write_1h_tokens,
        estimated: usage.estimated,
        cost_micros: usage.cost_micros,
        ttft_ms: ttft.map(|d| d.as_millis() as i64),
        duration_ms: duration.as_millis() as i64,
        tool_calls: tally.tool_calls,
        error_code: error_code.map(ErrorCode::as_str),
        provider: target.provider_name.clone(),
        model: target.model.clone(),
        usage_anomaly: usage_anomaly.clone(),
    };
    let settled = Box::pin(settle(cx, row, &settlement)).await;
    if let Some(why) = &usage_anomaly {
        warn!(model = %target.model, anomaly = %why, "the provider reported impossible usage; billed within the request's bounds");
        for kind in &anomalies {
            cx.metrics
                .usage_anomalies
                .get_or_create(&AnomalyLabels {
                    pipeline: pipeline.name.clone(),
                    model: target.model.clone(),
                    kind: kind.as_str(),
                })
                .inc();
        }
        // The row's day; today when the row was not settled here.
        let day = settled
            .as_ref()
            .map(|s| s.day.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| crate::ledger::money::utc_day(cx.ledger.now_ms()));
        cx.alerts
            .usage_anomaly(&pipeline.name, &target.model, &day, why)
            .await;
    }
    if let Some(settled) = settled {
        for (scope, spend) in &settled.spends {
            if let Some(b) = budgets.iter().find(|b| &b.scope == scope) {
                if b.limit_micros > 0 {
                    let ratio = spend.spent_micros as f64 / b.limit_micros as f64;
                    cx.metrics
                        .budget_used
                        .get_or_create(&ScopeLabels {
                            scope: scope.clone(),
                        })
                        .set(ratio);
                }
                cx.alerts.check(b, &settled.day, *spend).await;
            }
        }
    }

    let m = &cx.metrics;
    let model = ModelLabels {
        pipeline: pipeline.name.clone(),
        model: target.model.clone(),
    };
    m.requests
        .get_or_create(&RequestLabels {
            pipeline: pipeline.name.clone(),
            model: target.model.clone(),
            status: status.as_str().into(),
            key: key.to_string(),
        })
        .inc();
    for (kind, n) in [
        ("prompt", usage.prompt_tokens),
        ("completion", usage.completion_tokens),
    ] {
        m.tokens
            .get_or_create(&TokenLabels {
                pipeline: pipeline.name.clone(),
                model: target.model.clone(),
                kind,
                key: key.to_string(),
            })
            .inc_by(n);
    }
    m.cost_micros
        .get_or_create(&CostLabels {
            pipeline: pipeline.name.clone(),
            model: target.model.clone(),
            key: key.to_string(),
        })
        .inc_by(usage.cost_micros.max(0) as u64);
    if let Some(ttft) = ttft {
        m.ttft.get_or_create(&model).observe(ttft.as_secs_f64());
    }
    m.duration
        .get_or_create(&model)
        .observe(duration.as_secs_f64());

    info!(
        status = status.as_str(),
        finish_reason = finish,
        error = error_code.map(ErrorCode::as_str),
        model = %target.model,
        key = (!key.is_empty()).then_some(key),
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        estimated = usage.estimated,
        cost_usd = %usage.cost_usd,
        ttft_ms = ttft.map(|d| d.as_secs_f64() * 1000.0),
        duration_ms = duration.as_secs_f64() * 1000.0,
        "request finished"
    );
}
