//! The tool loop of phase 2: when the model asks for tools, run them
//! (arguments validated first), tell the client, feed the results back and
//! call the model again, until it answers, the rounds run out
//! (`tool_limit`), or the request's token budget would be exceeded.
//! Deadlines and the ceiling keep covering every round.

use futures_util::future::join_all;
use serde_json::Value;
use tokio::time::Instant;
use tracing::{info, warn};

use super::events::{ErrorCode, Event, ToolCallEvent, ToolResultEvent};
use super::stream::{Ending, Out, RoundEnd, stream_round};
use super::{RunContext, Tally, Target};
use crate::compile::Pipeline;
use crate::provider::{
    Chunk, ChunkStream, FinishReason, Message, Params, ProviderRequest, Role, ToolCall, ToolChoice,
};
use crate::telemetry::CallInfo;
use crate::tokens;
use crate::tools::ToolOutcome;

/// Runs one call the model asked for. An undeclared tool is an error the
/// model can read, like invalid arguments.
async fn run_tool(pipeline: &Pipeline, call: &ToolCall) -> ToolOutcome {
    match pipeline.tools.iter().find(|t| t.name() == call.name) {
        Some(tool) => tool.call(&call.arguments).await,
        None => {
            let known: Vec<&str> = pipeline.tools.iter().map(|t| t.name()).collect();
            let message = format!(
                "there is no tool named \"{}\"; the tools are: {}",
                call.name,
                known.join(", ")
            );
            ToolOutcome {
                ok: false,
                content: serde_json::json!({ "error": message }),
                rows: 0,
                truncated: false,
                error: Some(message),
            }
        }
    }
}

/// Tells the client of the calls the model asked for. Err: the client left.
async fn report_calls(
    out: &mut Out,
    calls: &[ToolCall],
    round: u32,
    runs: &'static str,
) -> Result<(), ()> {
    for c in calls {
        let arguments = serde_json::from_str::<Value>(&c.arguments)
            .unwrap_or_else(|_| Value::String(c.arguments.clone()));
        let ev = Event::ToolCall(Box::new(ToolCallEvent {
            id: c.id.clone(),
            name: c.name.clone(),
            arguments,
            round,
            runs,
        }));
        out.send(ev).await?;
    }
    Ok(())
}

/// The params of a call after a round of the pipeline's own tools: a
/// tool choice that forces a call (`required`, or one tool) was for the
/// first answer; kept, it would make the model call tools round after
/// round until max_tool_rounds and never answer.
fn after_tools(params: &std::sync::Arc<Params>) -> std::sync::Arc<Params> {
    match params.tool_choice {
        Some(ToolChoice::Required | ToolChoice::Tool(_)) => std::sync::Arc::new(Params {
            tool_choice: Some(ToolChoice::Auto),
            ..Params::clone(params)
        }),
        _ => params.clone(),
    }
}

/// Whether the calls of a round are complete, so that they may run (or
/// go back to the client as calls to run): the model finished asking for
/// them. A call cut by the provider's max_tokens or a content filter is
/// incomplete and never runs. A reason Sluice does not know (a compatible
/// server's own word for the end of a turn) cut nothing it says, and
/// calls whose arguments are whole JSON are taken as complete; arguments
/// that are not say the call was cut all the same.
fn calls_complete(finish: &FinishReason, calls: &[ToolCall]) -> bool {
    match finish {
        FinishReason::ToolCalls | FinishReason::Stop | FinishReason::StopSequence(_) => true,
        FinishReason::Length | FinishReason::ContentFilter => false,
        FinishReason::Other(_) => calls.iter().all(|c| {
            c.arguments.trim().is_empty()
                || serde_json::from_str::<serde::de::IgnoredAny>(&c.arguments).is_ok()
        }),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn stream_body(
    cx: &RunContext,
    pipeline: &Pipeline,
    ask: &super::Ask,
    target: &Target,
    mut stream: ChunkStream,
    mut first: Chunk,
    mut max_tokens: u32,
    out: &mut Out,
    tally: &mut Tally,
) -> Ending {
    let t = pipeline.timeouts;
    loop {
        let (calls, for_client, said, finish) = match stream_round(
            cx, pipeline, ask, stream, first, max_tokens, out, tally, t.idle,
        )
        .await
        {
            RoundEnd::Ended(ending) => return ending,
            RoundEnd::ToolCalls {
                calls,
                for_client,
                said,
                finish,
            } => (calls, for_client, said, finish),
        };
        if tally.trace.is_on() {
            // The model call that asked for tools is over.
            let usage = tally.round();
            tally
                .trace
                .call_end(Some(finish.as_str()), Some(usage), None);
        }
        let complete = calls_complete(&finish, &calls);
        let client_calls: Vec<ToolCall> = calls
            .iter()
            .zip(&for_client)
            .filter(|(_, c)| **c)
            .map(|(c, _)| c.clone())
            .collect();
        let for_client_n = client_calls.len();
        if for_client_n > 0 || !complete {
            // The client's calls end the answer: it runs them and comes
            // back with their results. The pipeline's own calls of the
            // same turn are not run (their results could not reach the
            // client's copy of the conversation); the model asks for them
            // again on the next request, where Sluice runs them.
            let deferred = calls.len() - for_client_n;
            if deferred > 0 {
                info!(
                    deferred,
                    client = for_client_n,
                    complete,
                    "the model asked for the client's tools and the pipeline's in one turn (or was cut); only the client's are returned"
                );
            }
            tally.tool_calls = tally.tool_calls.saturating_add(for_client_n as u32);
            if report_calls(out, &client_calls, tally.rounds + 1, "client")
                .await
                .is_err()
            {
                return Ending::ClientClosed;
            }
            // Complete calls for the client end the answer as OpenAI and
            // Anthropic say it: `tool_calls` (`tool_use`), whatever name
            // the provider gave its reason; cut ones say why they were cut.
            let reason = if complete {
                FinishReason::ToolCalls
            } else {
                finish
            };
            return Ending::Finished(reason);
        }
        if tally.rounds >= pipeline.max_tool_rounds {
            info!(
                rounds = tally.rounds,
                "the model asked for tools once more than max_tool_rounds allows"
            );
            return Ending::Finished(FinishReason::Other("tool_limit".into()));
        }
        let round = tally.rounds + 1;
        tally.tool_calls = tally.tool_calls.saturating_add(calls.len() as u32);
        if report_calls(out, &calls, round, "sluice").await.is_err() {
            return Ending::ClientClosed;
        }
        // The calls of one round are independent: run them together, but
        // never past the request's deadline or after the client left.
        let outcomes = tokio::select! {
            biased;
            _ = out.tx.closed() => return Ending::ClientClosed,
            _ = tokio::time::sleep_until(out.total_deadline) => {
                return Ending::Failed {
                    code: ErrorCode::TimeoutTotal,
                    message: format!("the request took longer than {}", humantime::format_duration(t.total)),
                    finish: "error",
                };
            }
            o = join_all(calls.iter().map(|c| {
                let span = tally.trace.tool(&c.name, &c.id);
                async move {
                    let o = run_tool(pipeline, c).await;
                    span.end(o.ok, o.error.as_deref(), o.rows, o.truncated);
                    o
                }
            })) => o,
        };
        let mut next_prompt = tally.prompt.clone();
        // What the model said, its reasoning (with the provider's
        // signature) included: Anthropic wants thinking blocks back.
        let mut turn = Message::new(Role::Assistant, "");
        turn.content = said;
        turn.tool_calls = calls.clone();
        next_prompt.push(turn);
        for (c, o) in calls.iter().zip(&outcomes) {
            if !o.ok {
                warn!(tool = %c.name, error = o.error.as_deref().unwrap_or_default(), "tool call refused or failed; the model is told");
            }
            let ev = Event::ToolResult(Box::new(ToolResultEvent {
                id: c.id.clone(),
                name: c.name.clone(),
                ok: o.ok,
                rows: o.rows,
                truncated: o.truncated,
                error: o.error.clone(),
            }));
            if out.send(ev).await.is_err() {
                return Ending::ClientClosed;
            }
            let mut result = Message::new(Role::Tool, o.content.to_string());
            result.tool_call_id = Some(c.id.clone());
            result.is_error = !o.ok;
            next_prompt.push(result);
        }
        let counted = tokens::count_prompt_off_worker(&next_prompt).await;
        tally.close_round(next_prompt, counted);

        // Another round must fit in the request's token budget: its prompt
        // (counted, with a margin) plus at least one completion token.
        max_tokens = pipeline.max_tokens;
        if let Some(total) = pipeline.max_total_tokens {
            let prompt_bound = tokens::prompt_bound(counted);
            let used = tally.total_tokens();
            if used.saturating_add(prompt_bound) >= total {
                return Ending::Failed {
                    code: ErrorCode::TokenCeiling,
                    message: format!(
                        "another model call would go past max_total_tokens ({total}); {used} tokens used in {} rounds",
                        tally.rounds
                    ),
                    finish: "length",
                };
            }
            max_tokens =
                max_tokens.min(u32::try_from(total - used - prompt_bound).unwrap_or(u32::MAX));
        }

        // A squeezed call thinks with a smaller budget; one left too
        // little to think at all ends the answer as the token budget does.
        let params = match super::fit_thinking(&after_tools(&ask.params), max_tokens) {
            Ok(p) => p,
            Err(why) => {
                info!(
                    max_tokens,
                    "too few tokens left for extended thinking in another round"
                );
                return Ending::Failed {
                    code: ErrorCode::TokenCeiling,
                    message: why,
                    finish: "length",
                };
            }
        };
        tally.max_tokens = u64::from(max_tokens);
        let trace_headers = tally.trace.call_start(CallInfo {
            provider: &target.provider_name,
            wire: target.provider.wire(),
            model: &target.model,
            attempt: 1,
            fallback: None,
            round: round + 1,
            max_tokens,
            prompt: &tally.prompt,
        });
        let preq = ProviderRequest {
            model: target.model.clone(),
            messages: tally.prompt.clone(),
            params,
            max_tokens,
            connect_timeout: t.connect.min(t.first_token),
            tools: ask.tools.clone(),
            trace_headers,
        };
        let first_deadline = (Instant::now() + t.first_token).min(out.total_deadline);
        let call = super::open_stream(target, preq);
        let next = tokio::select! {
            biased;
            _ = out.tx.closed() => return Ending::ClientClosed,
            _ = cx.force_stop.cancelled() => {
                return Ending::Failed { code: ErrorCode::Shutdown, message: "the server is shutting down".into(), finish: "error" };
            }
            r = tokio::time::timeout_at(first_deadline, call) => r,
        };
        match next {
            Ok(Ok((s, c, model))) => {
                let answering = model.as_deref().unwrap_or(&target.model);
                tally.trace.call_answered(answering, target.provider.wire());
                stream = s;
                first = c;
            }
            Ok(Err(e)) => {
                warn!(error = %e, round = round + 1, "provider call after tool results failed");
                let status = match &e {
                    crate::provider::ProviderError::Status { status, .. } => Some(*status),
                    _ => None,
                };
                tally
                    .trace
                    .call_failed(ErrorCode::Upstream.as_str(), status);
                return Ending::Upstream(e);
            }
            Err(_) => {
                let (code, message) = if first_deadline == out.total_deadline {
                    (
                        ErrorCode::TimeoutTotal,
                        format!(
                            "the request took longer than {}",
                            humantime::format_duration(t.total)
                        ),
                    )
                } else {
                    (
                        ErrorCode::TimeoutFirstToken,
                        format!(
                            "no token from the provider within {}",
                            humantime::format_duration(t.first_token)
                        ),
                    )
                };
                return Ending::Failed {
                    code,
                    message,
                    finish: "error",
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(arguments: &str) -> ToolCall {
        ToolCall {
            id: "c".into(),
            name: "f".into(),
            arguments: arguments.into(),
        }
    }

    #[test]
    fn calls_are_complete_unless_cut() {
        let whole = [call(r#"{"city":"Oslo"}"#), call("")];
        for reason in [
            FinishReason::ToolCalls,
            FinishReason::Stop,
            FinishReason::StopSequence(None),
            // A compatible server's own words for the end of a turn.
            FinishReason::Other("eos".into()),
            FinishReason::Other("end_turn".into()),
        ] {
            assert!(calls_complete(&reason, &whole), "{reason:?}");
        }
        for reason in [FinishReason::Length, FinishReason::ContentFilter] {
            assert!(!calls_complete(&reason, &whole), "{reason:?}");
        }
        // An unknown reason with arguments cut in the middle: cut.
        let cut = [call(r#"{"city":"Os"#)];
        assert!(!calls_complete(&FinishReason::Other("abort".into()), &cut));
        assert!(calls_complete(&FinishReason::ToolCalls, &cut));
    }
}
