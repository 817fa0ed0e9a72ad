//! Running one request: record it in the ledger (reserving its budget),
//! call the provider, enforce the deadlines and the token ceiling, turn the
//! upstream chunks into client [`Event`]s, and settle the ledger row.
//!
//! A request runs in its own task. Until the first upstream chunk arrives
//! nothing has been sent to the client, so a failure is still an HTTP
//! status ([`Admission::Rejected`]); from the first chunk on, the task
//! *commits* ([`Admission::Streaming`]) and every failure becomes an `error`
//! event followed by `done`.
//!
//! Cancellation is by ownership: the upstream stream owns its connection,
//! and this task drops it the moment a deadline fires, the ceiling is
//! crossed, the client goes away (the event channel or the admission
//! channel closes) or the server is forced to stop. Whatever happened, the
//! ledger row opened before the call is settled at the end.

mod ask;
mod attempts;
mod calls;
mod channel;
mod conclude;
mod events;
mod stream;
mod tally;
mod tools;
mod usage_check;

pub(crate) use ask::{Ask, fit_thinking};
pub use ask::{THINKING_MIN_BUDGET, check_params, check_request};
pub(crate) use tally::Tally;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, warn};

pub use channel::EventReceiver;
pub use events::{
    Admission, CountedBy, ErrorCode, Event, RateRefusal, Rejection, StartEvent, Status,
    ToolCallDelta, ToolCallEvent, ToolResultEvent, UsageReport,
};
use stream::{Ending, Out};

use crate::alerts::Alerts;
use crate::auth::ApiKey;
use crate::budget::{self, Budget, OnExhausted};
use crate::compile::Pipeline;
use crate::compile::clients::SystemRule;
use crate::ledger::money::{format_usd, until_next_utc_midnight, until_next_utc_month};
use crate::ledger::rate::{RateCharge, Standing};
use crate::ledger::{Admit, Ledger, Opening, Price, new_row_id};
use crate::metrics::{Metrics, PipelineLabels, RequestLabels};
use crate::provider::{FinishReason, Message, Params, Provider, ProviderError, Role, ToolSpec};
use crate::tokens;

/// Capacity of the per-request event channel. Small on purpose: a slow
/// client slows the upstream read instead of growing a buffer.
const EVENT_BUFFER: usize = 16;

/// What a client asked for, validated.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub request_id: String,
    pub messages: Vec<Message>,
    pub max_tokens: Option<u32>,
    /// What the client set; the pipeline's own values fill the rest.
    pub params: Params,
    /// Tools the client brought: offered to the model beside the
    /// pipeline's, and their calls go back to the client.
    pub tools: Vec<ToolSpec>,
    /// The API key that called (none when no key is declared): its
    /// budgets apply, and the ledger row and metrics name it.
    pub caller: Option<Arc<ApiKey>>,
}

/// Shared by all requests of a server (each request task holds an `Arc`).
pub struct RunContext {
    pub keepalive: Duration,
    /// Cancelled when open streams must end now (shutdown grace is over).
    pub force_stop: CancellationToken,
    pub tracker: tokio_util::task::TaskTracker,
    pub ledger: Arc<Ledger>,
    pub alerts: Alerts,
    pub metrics: Arc<Metrics>,
}

/// Starts a request in its own task; the receiver resolves once the request
/// is admitted (first upstream chunk) or rejected. Dropping the receiver
/// before that cancels the request.
pub fn spawn(
    cx: &Arc<RunContext>,
    pipeline: Arc<Pipeline>,
    req: RunRequest,
) -> oneshot::Receiver<Admission> {
    let (tx, rx) = oneshot::channel();
    // The ledger row's own identity: a client's request id may repeat.
    let row = new_row_id();
    // Its own root span with the request id, so every line of the run (in
    // JSON logs too, which show only the innermost span) names the request
    // (and its ledger row).
    let span = tracing::info_span!(parent: None, "request", id = %req.request_id, row = %row, pipeline = %pipeline.name);
    let cx2 = cx.clone();
    cx.tracker
        .spawn(async move { run(cx2, pipeline, req, row, tx).await }.instrument(span));
    rx
}

/// A model that may answer: the pipeline's own, a fallback, or its
/// budget's downgrade.
#[derive(Clone)]
struct Target {
    provider_name: String,
    provider: Arc<dyn Provider>,
    model: String,
    price: Option<Price>,
    downgraded_from: Option<String>,
}

/// Records a request refused before any provider call (status
/// `invalid_request`), so the ledger shows every request a pipeline got.
pub async fn record_invalid(
    cx: &RunContext,
    pipeline: &Pipeline,
    request_id: &str,
    error_code: &str,
    caller: Option<&ApiKey>,
) {
    let opening = Opening {
        rates: Vec::new(),
        id: new_row_id(),
        request_id: request_id.to_string(),
        pipeline: pipeline.name.clone(),
        provider: pipeline.provider_name.clone(),
        model: pipeline.model.clone(),
        api_key: caller.map(|k| k.name.clone()),
        team: caller.and_then(|k| k.team.clone()),
        reserve_micros: 0,
        scopes: Vec::new(),
    };
    if let Err(e) = cx
        .ledger
        .record_rejected(&opening, "invalid_request", error_code)
        .await
    {
        warn!(error = %e, "cannot record a refused request in the ledger");
    }
    cx.metrics
        .requests
        .get_or_create(&RequestLabels {
            pipeline: pipeline.name.clone(),
            model: pipeline.model.clone(),
            status: "invalid_request".into(),
            key: caller.map(|k| k.name.clone()).unwrap_or_default(),
        })
        .inc();
}

/// A provider's stream, its first chunk, and the model it named.
type Opened = (
    crate::provider::ChunkStream,
    crate::provider::Chunk,
    Option<String>,
);

/// Calls `target` and waits for its first chunk: the stream is only
/// handed on once the provider has produced something. The model the
/// provider names is taken out on the way (it is not something produced).
async fn open_stream(
    target: &Target,
    request: crate::provider::ProviderRequest,
) -> Result<Opened, ProviderError> {
    use crate::provider::Chunk;
    use futures_util::StreamExt;
    let mut stream = target.provider.call(request).await?;
    let mut model = None;
    loop {
        match stream.next().await {
            // A name, not a document: what a provider sends past 256
            // bytes is not shown (the configured model is named instead).
            Some(Ok(Chunk::Model(m))) => model = (m.len() <= 256).then_some(m),
            Some(Ok(chunk)) => return Ok((stream, chunk, model)),
            Some(Err(e)) => return Err(e),
            None => return Err(ProviderError::Truncated),
        }
    }
}

impl Target {
    fn from_ref(m: &crate::compile::ModelRef) -> Self {
        Target {
            provider_name: m.provider_name.clone(),
            provider: m.provider.clone(),
            model: m.model.clone(),
            price: m.price,
            downgraded_from: None,
        }
    }
}

fn rejection_for(e: &ProviderError) -> Rejection {
    let (code, upstream_status, retry_after) = match e {
        ProviderError::ConnectTimeout(_) => (ErrorCode::TimeoutConnect, None, None),
        ProviderError::Status {
            status: 429,
            retry_after,
            ..
        } => (ErrorCode::UpstreamRateLimited, Some(429), *retry_after),
        ProviderError::Status {
            status,
            retry_after,
            ..
        } => (ErrorCode::Upstream, Some(*status), *retry_after),
        ProviderError::Config(_) => (ErrorCode::Internal, None, None),
        _ => (ErrorCode::Upstream, None, None),
    };
    let message = match e {
        // Configuration problems are ours, not the client's: keep the
        // detail in the log.
        ProviderError::Config(_) => {
            "the provider of this pipeline is not configured correctly".into()
        }
        other => other.to_string(),
    };
    Rejection {
        code,
        message,
        upstream_status,
        retry_after,
        details: None,
        rate_limit: None,
        upstream_kind: e.kind(),
    }
}

/// Records the request in the ledger before any provider call, reserving
/// its worst-case cost on every budget that applies; downgrades to the
/// cheaper model when the budget says so. Err is the client's answer.
/// `choices` answers of up to `max_tokens` each are reserved for, every
/// prompt token at its dearest (an hour-long cache write when `one_hour`).
#[allow(clippy::too_many_arguments)]
async fn open_in_ledger(
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

async fn run(
    cx: Arc<RunContext>,
    pipeline: Arc<Pipeline>,
    req: RunRequest,
    row: String,
    admit: oneshot::Sender<Admission>,
) {
    let started = Instant::now();
    let mut prompt = Vec::with_capacity(req.messages.len() + 1);
    let replaced = pipeline.clients.system == SystemRule::Replace
        && req.messages.iter().any(|m| m.role == Role::System);
    if let Some(system) = pipeline.system.as_ref().filter(|_| !replaced) {
        prompt.push(Message::new(Role::System, system.clone()));
    }
    prompt.extend(req.messages);
    let ask = Ask::new(&pipeline, req.params, req.tools);
    let choices = ask.params.choices();
    let mut max_tokens = req
        .max_tokens
        .map_or(pipeline.max_tokens, |m| m.min(pipeline.max_tokens));
    // Counted once for the request's token budget, its reservation and its
    // usage estimate; a long prompt off the async workers.
    let counted = tokens::count_request_off_worker(&prompt, &ask.tools).await;
    if let Some(total) = pipeline.max_total_tokens {
        // The request's token budget bounds the first call too.
        let prompt_bound = tokens::prompt_bound(counted);
        if prompt_bound >= total {
            let mut r = Rejection::new(
                ErrorCode::TokenCeiling,
                format!(
                    "the prompt (about {counted} tokens) leaves nothing of this pipeline's max_total_tokens ({total})"
                ),
            );
            r.details = Some(json!({"field": "messages"}));
            info!(
                counted,
                total, "request rejected: prompt larger than max_total_tokens"
            );
            Box::pin(record_invalid(
                &cx,
                &pipeline,
                &req.request_id,
                "token_ceiling",
                req.caller.as_deref(),
            ))
            .await;
            let _ = admit.send(Admission::Rejected(r));
            return;
        }
        // Every choice generates up to max_tokens: n of them share what
        // the prompt leaves (at least one token each).
        let share = (total - prompt_bound) / u64::from(choices);
        if share == 0 {
            let mut r = Rejection::new(
                ErrorCode::TokenCeiling,
                format!(
                    "the prompt (about {counted} tokens) leaves too little of this pipeline's max_total_tokens ({total}) for {choices} choices"
                ),
            );
            r.details = Some(json!({"field": "n"}));
            Box::pin(record_invalid(
                &cx,
                &pipeline,
                &req.request_id,
                "token_ceiling",
                req.caller.as_deref(),
            ))
            .await;
            let _ = admit.send(Admission::Rejected(r));
            return;
        }
        max_tokens = max_tokens.min(u32::try_from(share).unwrap_or(u32::MAX));
    }
    let caller = req.caller.as_deref();
    // Rate limits take the request's worst case in tokens: its prompt and
    // every completion it may generate (all rounds of a tool loop).
    let worst_tokens = match pipeline.max_total_tokens {
        Some(total) if !pipeline.tools.is_empty() => total,
        _ => tokens::prompt_bound(counted)
            .saturating_add(u64::from(max_tokens).saturating_mul(u64::from(choices))),
    };
    let worst_tokens = i64::try_from(worst_tokens).unwrap_or(i64::MAX);
    let rates: Vec<RateCharge> = pipeline
        .rate_limit
        .iter()
        .chain(caller.iter().flat_map(|k| k.rate_limits.iter()))
        .flat_map(|r| r.charges(worst_tokens))
        .collect();
    // What the first call is sent: a thinking budget within max_tokens.
    let params = match fit_thinking(&ask.params, max_tokens) {
        Ok(p) => p,
        Err(why) => {
            let mut r = Rejection::new(ErrorCode::TokenCeiling, why);
            r.details = Some(json!({"field": "thinking.budget_tokens"}));
            Box::pin(record_invalid(
                &cx,
                &pipeline,
                &req.request_id,
                "token_ceiling",
                req.caller.as_deref(),
            ))
            .await;
            let _ = admit.send(Admission::Rejected(r));
            return;
        }
    };
    let budgets: Vec<&Budget> = pipeline
        .budget
        .iter()
        .chain(pipeline.global_budget.iter())
        .chain(caller.iter().flat_map(|k| k.budgets.iter()))
        .collect();

    // The futures of admission, phase 1 and settlement are boxed: this
    // task's allocation lasts as long as the stream, and only the streaming
    // state needs to live that long.
    // The reservation assumes the dearest an image may be billed.
    let images = prompt
        .iter()
        .flat_map(|m| &m.content)
        .filter(|p| matches!(p, crate::provider::Part::Image { .. }))
        .count() as u64;
    let reserve_counted = counted
        .saturating_add(images.saturating_mul(tokens::IMAGE_TOKENS_BOUND - tokens::IMAGE_TOKENS));
    let target = match Box::pin(open_in_ledger(
        &cx,
        &pipeline,
        &row,
        &req.request_id,
        reserve_counted,
        max_tokens,
        choices,
        ask.params.cache_control_1h,
        &budgets,
        caller,
        &rates,
    ))
    .await
    {
        Ok(t) => t,
        Err(rejection) => {
            let status = Status::for_error(rejection.code);
            info!(
                status = status.as_str(),
                error = rejection.code.as_str(),
                "request rejected before the provider"
            );
            cx.metrics
                .requests
                .get_or_create(&RequestLabels {
                    pipeline: pipeline.name.clone(),
                    model: pipeline.model.clone(),
                    status: status.as_str().into(),
                    key: caller.map(|k| k.name.clone()).unwrap_or_default(),
                })
                .inc();
            let _ = admit.send(Admission::Rejected(rejection));
            return;
        }
    };
    // The pipeline's model first, then its fallbacks; a downgrade stands alone.
    let candidates: Vec<Target> = if target.downgraded_from.is_some() {
        vec![target]
    } else {
        std::iter::once(target)
            .chain(pipeline.fallbacks.iter().map(Target::from_ref))
            .collect()
    };
    let mut tally = Tally::new(started, prompt, counted, candidates[0].price);
    tally.one_hour = ask.params.cache_control_1h;
    // What the provider may bill as completion: every choice's.
    tally.max_tokens = u64::from(max_tokens).saturating_mul(u64::from(choices));
    tally.tool_spec_bytes = usage_check::tool_spec_bytes(&ask.tools);
    let active = cx
        .metrics
        .active_streams
        .get_or_create(&PipelineLabels {
            pipeline: pipeline.name.clone(),
        })
        .clone();
    active.inc();
    let (answered, status, finish, error) = drive(
        &cx,
        &pipeline,
        &ask,
        params,
        &candidates,
        &req.request_id,
        max_tokens,
        &mut tally,
        admit,
    )
    .await;
    active.dec();
    Box::pin(conclude::conclude(
        &cx,
        &pipeline,
        &candidates[answered],
        &row,
        &tally,
        status,
        &finish,
        error,
        &budgets,
        caller.map_or("", |k| k.name.as_str()),
    ))
    .await;
}

/// Phases 1 and 2: returns which candidate answered (or was tried last),
/// the ledger status, finish reason and error code.
#[allow(clippy::too_many_arguments)]
async fn drive(
    cx: &RunContext,
    pipeline: &Pipeline,
    ask: &Ask,
    params: Arc<Params>,
    candidates: &[Target],
    request_id: &str,
    max_tokens: u32,
    tally: &mut Tally,
    mut admit: oneshot::Sender<Admission>,
) -> (usize, Status, String, Option<ErrorCode>) {
    let t = pipeline.timeouts;
    let total_deadline = tally.started + t.total;

    // Phase 1: nothing sent yet. Wait for the first chunk, retrying and
    // falling back as the pipeline allows.
    let phase1 = Box::pin(attempts::first_chunk(
        cx,
        pipeline,
        ask,
        params,
        candidates,
        &tally.prompt,
        max_tokens,
        tally.started,
        &mut admit,
    ))
    .await;
    let (index, stream, first_chunk, answering) = match phase1 {
        Ok(v) => v,
        Err((index, attempts::NoStart::ClientClosed)) => {
            return (index, Status::ClientClosed, "cancelled".into(), None);
        }
        Err((index, attempts::NoStart::Rejected(rejection))) => {
            let code = rejection.code;
            let status = Status::for_error(code);
            let _ = admit.send(Admission::Rejected(rejection));
            return (index, status, "error".into(), Some(code));
        }
    };
    let target = &candidates[index];
    tally.price = target.price;
    tally.first_token_at = Some(Instant::now());

    // Phase 2: committed.
    let (tx, rx) = channel::channel(EVENT_BUFFER);
    if admit.send(Admission::Streaming(rx)).is_err() {
        return (index, Status::ClientClosed, "cancelled".into(), None);
    }
    let mut out = Out {
        tx,
        total_deadline,
        keepalive: cx.keepalive,
    };
    let start = Event::Start(Box::new(StartEvent {
        request_id: request_id.to_string(),
        pipeline: pipeline.name.clone(),
        provider: target.provider_name.clone(),
        // The model that answers, as the provider names it.
        model: answering.unwrap_or_else(|| target.model.clone()),
        downgraded_from: target.downgraded_from.clone(),
        prompt_tokens: tally.prompt_counted,
    }));
    let ending = match out.send(start).await {
        Err(()) => Ending::ClientClosed,
        Ok(()) => {
            tools::stream_body(
                cx,
                pipeline,
                ask,
                target,
                stream,
                first_chunk,
                max_tokens,
                &mut out,
                tally,
            )
            .await
        }
    };
    // The upstream stream was dropped inside `stream_body`: the provider
    // connection is closed before the client hears the ending.
    let (status, finish, error) = match ending {
        Ending::ClientClosed => (Status::ClientClosed, "cancelled".into(), None),
        Ending::Finished(reason) => {
            let _ = out.send(Event::Usage(Box::new(tally.usage()))).await;
            if let FinishReason::StopSequence(Some(matched)) = &reason {
                let _ = out.send(Event::StopSequence(matched.clone())).await;
            }
            let reason = reason.as_str().to_string();
            let _ = out
                .send(Event::Done {
                    finish_reason: reason.clone(),
                })
                .await;
            (Status::Ok, reason, None)
        }
        ending @ (Ending::Failed { .. } | Ending::Upstream(_)) => {
            let (code, message, finish, kind) = match ending {
                Ending::Failed {
                    code,
                    message,
                    finish,
                } => (code, message, finish, None),
                Ending::Upstream(e) => (ErrorCode::Upstream, e.to_string(), "error", e.kind()),
                _ => unreachable!(),
            };
            let status = Status::for_error(code);
            let _ = out.send(Event::Usage(Box::new(tally.usage()))).await;
            let _ = out
                .send(Event::Error {
                    code,
                    message,
                    kind,
                })
                .await;
            let _ = out
                .send(Event::Done {
                    finish_reason: finish.to_string(),
                })
                .await;
            (status, finish.to_string(), Some(code))
        }
    };
    (index, status, finish, error)
}
