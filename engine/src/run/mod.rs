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

mod admission;
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

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use admission::{open_in_ledger, refuse_token_ceiling};
pub use channel::EventReceiver;
pub use events::{
    Admission, CountedBy, ErrorCode, Event, RateRefusal, Rejection, StartEvent, Status,
    ToolCallDelta, ToolCallEvent, ToolResultEvent, UsageReport,
};
use stream::{Ending, Out};

use crate::alerts::Alerts;
use crate::auth::ApiKey;
use crate::budget::Budget;
use crate::compile::Pipeline;
use crate::compile::clients::SystemRule;
use crate::ledger::rate::RateCharge;
use crate::ledger::{Ledger, Opening, Price, new_row_id};
use crate::metrics::{Metrics, PipelineLabels, RequestLabels};
use crate::provider::{FinishReason, Message, Params, Provider, ProviderError, Role, ToolSpec};
use crate::telemetry::{Outcome, Trace};
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
    /// Where its trace starts (the client's `traceparent`), when traces
    /// are on.
    pub trace: Option<crate::telemetry::Incoming>,
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
    /// Traces; None when they are off.
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
}

impl RunContext {
    /// Where a request's trace starts, read from its head when traces are on.
    pub fn incoming_trace(&self, headers: &http::HeaderMap) -> Option<crate::telemetry::Incoming> {
        self.telemetry.as_ref().map(|t| t.incoming(headers))
    }
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

async fn run(
    cx: Arc<RunContext>,
    pipeline: Arc<Pipeline>,
    req: RunRequest,
    row: String,
    admit: oneshot::Sender<Admission>,
) {
    let started = Instant::now();
    let mut trace = match (&cx.telemetry, &req.trace) {
        (Some(t), Some(incoming)) => t.request(
            incoming,
            &pipeline.name,
            &req.request_id,
            &pipeline.model,
            req.caller.as_deref().map(|k| k.name.as_str()),
        ),
        _ => Trace::OFF,
    };
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
            info!(
                counted,
                total, "request rejected: prompt larger than max_total_tokens"
            );
            let message = format!(
                "the prompt (about {counted} tokens) leaves nothing of this pipeline's max_total_tokens ({total})"
            );
            let caller = req.caller.as_deref();
            trace.finish(Outcome::refused("invalid_request", "token_ceiling"));
            refuse_token_ceiling(
                &cx,
                &pipeline,
                &req.request_id,
                caller,
                admit,
                message,
                "messages",
            )
            .await;
            return;
        }
        // Every choice generates up to max_tokens: n of them share what
        // the prompt leaves (at least one token each).
        let share = (total - prompt_bound) / u64::from(choices);
        if share == 0 {
            let message = format!(
                "the prompt (about {counted} tokens) leaves too little of this pipeline's max_total_tokens ({total}) for {choices} choices"
            );
            let caller = req.caller.as_deref();
            trace.finish(Outcome::refused("invalid_request", "token_ceiling"));
            refuse_token_ceiling(&cx, &pipeline, &req.request_id, caller, admit, message, "n")
                .await;
            return;
        }
        max_tokens = max_tokens.min(u32::try_from(share).unwrap_or(u32::MAX));
    }
    trace.max_tokens(max_tokens);
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
            let field = "thinking.budget_tokens";
            trace.finish(Outcome::refused("invalid_request", "token_ceiling"));
            refuse_token_ceiling(&cx, &pipeline, &req.request_id, caller, admit, why, field).await;
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
            trace.finish(Outcome::refused(status.as_str(), rejection.code.as_str()));
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
    tally.trace = trace;
    let active = cx
        .metrics
        .active_streams
        .get_or_create(&PipelineLabels {
            pipeline: pipeline.name.clone(),
        })
        .clone();
    active.inc();
    cx.metrics.streams_now.inc();
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
    cx.metrics.streams_now.dec();
    let mut trace = std::mem::take(&mut tally.trace);
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
    if trace.is_on() {
        let usage = tally.usage();
        trace.finish(Outcome {
            status: status.as_str(),
            error: error.map(ErrorCode::as_str),
            finish: &finish,
            usage: Some(&usage),
            ttft: tally.first_token_at.map(|t| t.duration_since(started)),
            tool_calls: tally.tool_calls,
            rounds: tally.rounds + 1,
        });
    }
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
        &mut tally.trace,
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
    let ended = match ending {
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
    let (status, finish, error) = ended;
    if tally.trace.is_on() {
        // The model call that was streaming ends with the request.
        let round = tally.round();
        let error_type = error
            .map(ErrorCode::as_str)
            .or((status != Status::Ok).then_some(status.as_str()));
        tally.trace.call_end(Some(&finish), Some(round), error_type);
    }
    (index, status, finish, error)
}
