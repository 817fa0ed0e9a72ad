//! Admission: the ledger row opened before any provider call, with the
//! worst case reserved on every budget and taken from every rate limit
//! that applies (or the 429 that says which could not), and the refusals
//! recorded before a call.

use std::time::Duration;

use serde_json::json;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::{
    Admission, ErrorCode, RateRefusal, Rejection, RunContext, Status, Target, record_invalid,
};
use crate::auth::ApiKey;
use crate::budget::{self, Budget, OnExhausted};
use crate::compile::Pipeline;
use crate::ledger::money::{format_usd, until_next_utc_midnight, until_next_utc_month};
use crate::ledger::rate::{RateCharge, Standing};
use crate::ledger::{Admit, Opening};
use crate::tokens;

/// Refuses a request whose token budget leaves its first call nothing
/// (`field` names what to change), recording it: before any call, so an
/// HTTP status. Nothing is reserved yet.
pub(super) async fn refuse_token_ceiling(
    cx: &RunContext,
    pipeline: &Pipeline,
    request_id: &str,
    caller: Option<&ApiKey>,
    admit: oneshot::Sender<Admission>,
    message: String,
    field: &str,
) {
    let mut r = Rejection::new(ErrorCode::TokenCeiling, message);
    r.details = Some(json!({ "field": field }));
    Box::pin(record_invalid(
        cx,
        pipeline,
        request_id,
        "token_ceiling",
        caller,
    ))
    .await;
    let _ = admit.send(Admission::Rejected(r));
}

/// Records the request in the ledger before any provider call, reserving
/// its worst-case cost on every budget that applies; downgrades to the
/// cheaper model when the budget says so. Err is the client's answer.
/// `choices` answers of up to `max_tokens` each are reserved for, every
/// prompt token at its dearest (an hour-long cache write when `one_hour`).
#[allow(clippy::too_many_arguments)]
pub(super) async fn open_in_ledger(
    cx: &RunContext,
    pipeline: &Pipeline,
    row: &str,
    request_id: &str,
    prompt_counted: u64,
    max_tokens: u32,
    choices: u32,
    one_hour: bool,
    budgets: &[&Budget],
    caller: Option<&ApiKey>,
    rates: &[RateCharge],
) -> Result<Target, Rejection> {
    let mut target = Target {
        provider_name: pipeline.provider_name.clone(),
        provider: pipeline.provider.clone(),
        model: pipeline.model.clone(),
        price: pipeline.price,
        downgraded_from: None,
    };
    let scopes: Vec<_> = budgets.iter().map(|b| b.ledger_scope()).collect();
    loop {
        // compile guarantees a price wherever a budget applies. A fallback
        // may answer instead: reserve for the dearest model that might.
        let reserve = if scopes.is_empty() {
            0
        } else {
            let fallbacks = if target.downgraded_from.is_some() {
                &[][..]
            } else {
                &pipeline.fallbacks[..]
            };
            std::iter::once(target.price)
                .chain(fallbacks.iter().map(|f| f.price))
                .flatten()
                .map(|p| match pipeline.max_total_tokens {
                    // Rounds of tool calls: all of them together are
                    // bounded by max_total_tokens (and the last round's
                    // ceiling margin), billed at worst as output.
                    Some(total) if !pipeline.tools.is_empty() => {
                        let bound = tokens::completion_guard(total);
                        p.worst_input(one_hour).cost(bound, 0).max(p.cost(0, bound))
                    }
                    _ => budget::reservation(&p, prompt_counted, max_tokens, choices, one_hour),
                })
                .max()
                .unwrap_or(0)
        };
        let opening = Opening {
            id: row.to_string(),
            request_id: request_id.to_string(),
            pipeline: pipeline.name.clone(),
            provider: target.provider_name.clone(),
            model: target.model.clone(),
            api_key: caller.map(|k| k.name.clone()),
            team: caller.and_then(|k| k.team.clone()),
            reserve_micros: reserve,
            scopes: scopes.clone(),
            rates: rates.to_vec(),
        };
        let exhausted = match cx.ledger.open_request(&opening).await {
            Ok(Admit::Admitted) => return Ok(target),
            Ok(Admit::RateLimited { bucket, standing }) => {
                return Err(rate_limited(cx, &opening, &bucket, standing).await);
            }
            Ok(Admit::Exhausted {
                scope,
                limit_micros,
                spent_micros,
            }) => (scope, limit_micros, spent_micros),
            Err(e) => {
                // No row, no call: spend that cannot be recorded is not made.
                error!(error = %e, "cannot record the request in the ledger; refusing it");
                return Err(Rejection::new(
                    ErrorCode::Internal,
                    "the ledger is unavailable; the request was not sent",
                ));
            }
        };
        let (scope, daily, spent) = exhausted;
        if target.downgraded_from.is_none()
            && let Some(b) = &pipeline.budget
            && let OnExhausted::Downgrade(d) = &b.on_exhausted
        {
            info!(scope = %scope, from = %target.model, to = %d.model, "budget cannot afford the model; downgrading");
            target = Target {
                provider_name: d.provider_name.clone(),
                provider: d.provider.clone(),
                model: d.model.clone(),
                price: Some(d.price),
                downgraded_from: Some(target.model),
            };
            continue;
        }
        if let Err(e) = cx
            .ledger
            .record_rejected(
                &opening,
                Status::BudgetRejected.as_str(),
                "budget_exhausted",
            )
            .await
        {
            warn!(error = %e, "cannot record a budget rejection");
        }
        let now = cx.ledger.now_ms();
        let monthly = scope.ends_with(crate::ledger::MONTHLY);
        let (retry_after, period) = if monthly {
            (until_next_utc_month(now), "this month")
        } else {
            (until_next_utc_midnight(now), "today")
        };
        let name = scope.strip_suffix(crate::ledger::MONTHLY).unwrap_or(&scope);
        let mut r = Rejection::new(
            ErrorCode::BudgetExhausted,
            format!(
                "the {name} budget of ${} for {period} (UTC) cannot afford this request: ${} spent",
                format_usd(daily),
                format_usd(spent)
            ),
        );
        r.retry_after = Some(retry_after);
        r.details = Some(json!({
            "budget": {
                "scope": scope,
                "daily_usd": format_usd(daily),
                "spent_usd": format_usd(spent),
                "reserve_usd": format_usd(reserve),
            }
        }));
        return Err(r);
    }
}

/// Records a request a rate limit refused, and the client's answer: 429,
/// when to try again, and how the limit stands.
async fn rate_limited(
    cx: &RunContext,
    opening: &Opening,
    bucket: &str,
    standing: Standing,
) -> Rejection {
    if let Err(e) = cx
        .ledger
        .record_rejected(opening, Status::RateLimited.as_str(), "rate_limited")
        .await
    {
        warn!(error = %e, "cannot record a rate-limited request");
    }
    let (scope, kind) = bucket.rsplit_once('/').unwrap_or((bucket, "requests"));
    let kind = if kind == "tokens" {
        "tokens"
    } else {
        "requests"
    };
    let message = match standing.retry_after_ms {
        Some(_) => format!(
            "the {scope} rate limit of {} {kind} per minute is reached; try again shortly",
            standing.limit
        ),
        None => format!(
            "this request may use more {kind} than the {scope} rate limit allows in a minute ({}); it can never be admitted",
            standing.limit
        ),
    };
    info!(bucket, "request refused by a rate limit");
    let mut r = Rejection::new(ErrorCode::RateLimited, message);
    r.retry_after = standing
        .retry_after_ms
        .map(|ms| Duration::from_millis(ms.max(0) as u64));
    r.details =
        Some(json!({"rate_limit": {"scope": scope, "kind": kind, "limit": standing.limit}}));
    r.rate_limit = Some(RateRefusal { kind, standing });
    r
}
