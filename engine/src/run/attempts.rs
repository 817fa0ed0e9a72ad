//! Phase 1 with retries and fallbacks: try the pipeline's model (and then
//! each fallback) until one produces its first chunk. Only here, before the
//! first byte reaches the client, may a call be tried again.

use std::time::Duration;

use serde_json::json;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::events::{Admission, ErrorCode, Rejection};
use super::{RunContext, Target, rejection_for};
use crate::compile::Pipeline;
use crate::provider::{Chunk, ChunkStream, Message, ProviderError, ProviderRequest};
use crate::telemetry::{CallInfo, Trace};

/// How phase 1 ended without a first chunk.
pub(super) enum NoStart {
    /// The client left while we were trying.
    ClientClosed,
    /// Every try failed (or one failed in a way no retry can fix).
    Rejected(Rejection),
}

/// What to do after a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Try this model again, after a backoff.
    Retry,
    /// This model cannot serve (no key, unknown model): go to the next one.
    Skip,
    /// The request itself is at fault: no model will take it.
    GiveUp,
}

fn classify(e: &ProviderError) -> Next {
    match e {
        ProviderError::Status { status, .. } => match status {
            408 | 429 | 500..=599 => Next::Retry,
            401 | 403 | 404 => Next::Skip,
            _ => Next::GiveUp,
        },
        ProviderError::Connect(_)
        | ProviderError::ConnectTimeout(_)
        | ProviderError::Io(_)
        | ProviderError::Truncated => Next::Retry,
        // Before the first token, an in-stream error is the provider being
        // unavailable (Anthropic's overloaded_error arrives this way).
        ProviderError::InStream { .. } => Next::Retry,
        ProviderError::Malformed(_) => Next::Skip,
        ProviderError::Config(_) => Next::Skip,
    }
}

/// Exponential backoff with jitter (between half and all of the step), at
/// least what the provider asked for with `Retry-After`.
fn backoff(pipeline: &Pipeline, retry: u32, retry_after: Option<Duration>) -> Duration {
    let p = pipeline.retries;
    let step = p
        .backoff
        .saturating_mul(1u32 << retry.min(16))
        .min(p.max_backoff);
    let jitter = step.mul_f64(0.5 + 0.5 * unit_random());
    retry_after.map_or(jitter, |ra| ra.max(jitter))
}

fn unit_random() -> f64 {
    let b = uuid::Uuid::new_v4().into_bytes();
    f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])) / f64::from(u32::MAX)
}

/// Tries candidates in order, each up to `retries.attempts` times, until
/// one yields its first chunk (each sent `params`, fitted to `max_tokens`). Returns the index of the candidate that
/// answered with its stream, first chunk and the model it named.
#[allow(clippy::too_many_arguments)]
pub(super) async fn first_chunk(
    cx: &RunContext,
    pipeline: &Pipeline,
    ask: &super::Ask,
    params: std::sync::Arc<crate::provider::Params>,
    candidates: &[Target],
    prompt: &[Message],
    max_tokens: u32,
    started: Instant,
    admit: &mut oneshot::Sender<Admission>,
    trace: &mut Trace,
) -> Result<(usize, ChunkStream, Chunk, Option<String>), (usize, NoStart)> {
    let t = pipeline.timeouts;
    let total_deadline = started + t.total;
    let mut failures = Vec::new();
    let mut last: Option<Rejection> = None;
    let mut last_index = 0;
    'models: for (index, target) in candidates.iter().enumerate() {
        last_index = index;
        for attempt in 1..=pipeline.retries.attempts {
            let attempt_start = Instant::now();
            if attempt_start >= total_deadline {
                break 'models;
            }
            let first_deadline = (attempt_start + t.first_token).min(total_deadline);
            let trace_headers = trace.call_start(CallInfo {
                provider: &target.provider_name,
                wire: target.provider.wire(),
                model: &target.model,
                attempt,
                fallback: Some(index),
                round: 1,
                max_tokens,
                prompt,
            });
            let preq = ProviderRequest {
                model: target.model.clone(),
                messages: prompt.to_vec(),
                params: params.clone(),
                max_tokens,
                connect_timeout: t.connect.min(t.first_token),
                tools: ask.tools.clone(),
                trace_headers,
            };
            debug!(provider = %target.provider_name, model = %target.model, attempt, max_tokens, "calling provider");
            let first = super::open_stream(target, preq);
            let outcome = tokio::select! {
                biased;
                _ = admit.closed() => return Err((index, NoStart::ClientClosed)),
                _ = cx.force_stop.cancelled() => {
                    return Err((index, NoStart::Rejected(Rejection::new(ErrorCode::Shutdown, "the server is shutting down"))));
                }
                r = tokio::time::timeout_at(first_deadline, first) => r,
            };
            let (rejection, next, retry_after) = match outcome {
                Ok(Ok((stream, chunk, model))) => {
                    let answering = model.as_deref().unwrap_or(&target.model);
                    trace.call_answered(answering, target.provider.wire());
                    return Ok((index, stream, chunk, model));
                }
                Ok(Err(e)) => {
                    let retry_after = match &e {
                        ProviderError::Status { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    (rejection_for(&e), classify(&e), retry_after)
                }
                Err(_)
                    if first_deadline == total_deadline
                        && attempt_start + t.first_token > total_deadline =>
                {
                    let r = Rejection::new(
                        ErrorCode::TimeoutTotal,
                        format!(
                            "no token from the provider within the request's {}",
                            humantime::format_duration(t.total)
                        ),
                    );
                    (r, Next::GiveUp, None)
                }
                Err(_) => (
                    Rejection::new(
                        ErrorCode::TimeoutFirstToken,
                        format!(
                            "no token from the provider within {}",
                            humantime::format_duration(t.first_token)
                        ),
                    ),
                    Next::Retry,
                    None,
                ),
            };
            warn!(
                provider = %target.provider_name,
                model = %target.model,
                attempt,
                error = %rejection.message,
                "attempt failed before the first token"
            );
            trace.call_failed(rejection.code.as_str(), rejection.upstream_status);
            failures.push(json!({
                "provider": target.provider_name,
                "model": target.model,
                "attempt": attempt,
                "code": rejection.code,
                "error": rejection.message,
                "upstream_status": rejection.upstream_status,
            }));
            last = Some(rejection);
            match next {
                Next::GiveUp => break 'models,
                Next::Skip => continue 'models,
                Next::Retry if attempt < pipeline.retries.attempts => {
                    let wait = backoff(pipeline, attempt - 1, retry_after);
                    if Instant::now() + wait >= total_deadline {
                        // Waiting would outlive the request: a fallback
                        // (another provider) may still answer in time.
                        continue 'models;
                    }
                    tokio::select! {
                        biased;
                        _ = admit.closed() => return Err((index, NoStart::ClientClosed)),
                        _ = cx.force_stop.cancelled() => {
                            return Err((index, NoStart::Rejected(Rejection::new(ErrorCode::Shutdown, "the server is shutting down"))));
                        }
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Next::Retry => {}
            }
        }
    }
    let mut rejection = last.unwrap_or_else(|| {
        Rejection::new(
            ErrorCode::TimeoutTotal,
            format!(
                "the request took longer than {}",
                humantime::format_duration(t.total)
            ),
        )
    });
    if failures.len() > 1 {
        warn!(attempts = %serde_json::Value::Array(failures.clone()), "every attempt failed");
        rejection.message = format!(
            "all {} attempts failed; the last: {}",
            failures.len(),
            rejection.message
        );
    }
    rejection.details = Some(json!({ "attempts": failures }));
    Err((last_index, NoStart::Rejected(rejection)))
}
