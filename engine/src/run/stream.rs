//! Phase 2 of a request: the stream is committed; relay upstream chunks
//! as events while enforcing the idle and total deadlines, the token
//! ceiling and keep-alives, and noticing a client that left.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::channel::EventSender;
use super::events::{ErrorCode, Event, ToolCallDelta};
use super::{RunContext, Tally};
use crate::compile::Pipeline;

use super::calls::{Calls, Malformed};
use crate::provider::{Chunk, ChunkStream, FinishReason, Part, ProviderError, ToolCall};
use crate::tokens;

pub(super) enum Ending {
    Finished(FinishReason),
    Failed {
        code: ErrorCode,
        message: String,
        finish: &'static str,
    },
    /// The provider failed after the commit (its stream, or the call of a
    /// later round): an `upstream` error that keeps the provider's kind.
    Upstream(ProviderError),
    ClientClosed,
}

/// The client side of the stream: sends events, bounded by the total
/// deadline, and emits keep-alives while nothing else is sent.
pub(super) struct Out {
    pub tx: EventSender,
    pub total_deadline: Instant,
    pub keepalive: Duration,
}

impl Out {
    /// Err when the client is gone (or so slow that the total deadline
    /// passed while we waited for it).
    pub async fn send(&mut self, ev: Event) -> Result<(), ()> {
        match tokio::time::timeout_at(
            self.total_deadline + Duration::from_secs(1),
            self.tx.send(ev),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }
}

/// How one model call (round) ended.
pub(super) enum RoundEnd {
    Ended(Ending),
    /// The model asked for tools; `said` is what it said before asking
    /// (its reasoning with the provider's signature, then its text),
    /// `finish` the provider's finish reason. `for_client[i]` says whether
    /// `calls[i]` goes back to the client (already relayed as it came).
    ToolCalls {
        calls: Vec<ToolCall>,
        for_client: Vec<bool>,
        said: Vec<Part>,
        finish: FinishReason,
    },
}

/// Most bytes of reasoning signatures and redacted reasoning one round
/// may carry: they are opaque (not counted as generated tokens), and a
/// signature is a few hundred bytes.
const MAX_OPAQUE_BYTES: usize = 256 << 10;

/// Appends to what the model said, merging with the part before when it
/// is of the same kind (a round's text is one part, so is each thinking
/// block with its signature).
fn say(said: &mut Vec<Part>, piece: Piece<'_>) {
    match (said.last_mut(), piece) {
        (Some(Part::Text(t)), Piece::Text(s)) => t.push_str(s),
        (Some(Part::Thinking { text, signature }), Piece::Thinking(s)) if signature.is_empty() => {
            text.push_str(s)
        }
        (Some(Part::Thinking { signature, .. }), Piece::Signature(s)) => signature.push_str(s),
        (_, Piece::Text(s)) => said.push(Part::Text(s.to_string())),
        (_, Piece::Thinking(s)) => said.push(Part::Thinking {
            text: s.to_string(),
            signature: String::new(),
        }),
        (_, Piece::Signature(s)) => said.push(Part::Thinking {
            text: String::new(),
            signature: s.to_string(),
        }),
    }
}

enum Piece<'a> {
    Text(&'a str),
    Thinking(&'a str),
    Signature(&'a str),
}

/// Most tool calls one model call may ask for. Models ask for a handful;
/// a stream opening more is not a model at work, and each call holds
/// memory until the round ends.
const MAX_TOOL_CALLS: usize = 128;

/// Tokens a tool call costs beyond its name and arguments (its framing),
/// so that a stream of empty calls still counts.
const TOOL_CALL_FRAMING_TOKENS: u64 = 4;

/// Most bytes of log probabilities a round relays per token its ceiling
/// allows: one token's entry with the 20 alternatives OpenAI gives at most
/// takes about 3 KiB. What a round holds of them is thus bounded by the
/// ceiling like its text.
const LOGPROBS_BYTES_PER_TOKEN: u64 = 4 << 10;

/// The length of `v` as JSON, without writing it anywhere.
fn json_len(v: &serde_json::Value) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len() as u64);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, v) {
        Ok(()) => count.0,
        Err(_) => u64::MAX,
    }
}

/// Which choices of a call have finished (at most 128, what `n` allows),
/// and the reason of the first: the call's own reason (the ledger's).
struct Choices {
    n: u32,
    done: u128,
    first_reason: Option<FinishReason>,
}

impl Choices {
    fn new(n: u32) -> Self {
        Choices {
            n: n.clamp(1, 128),
            done: 0,
            first_reason: None,
        }
    }

    fn is_done(&self, choice: u32) -> bool {
        choice < 128 && self.done & (1u128 << choice) != 0
    }

    /// Records that `choice` finished; Some(the call's reason) once every
    /// choice has.
    fn finish(&mut self, choice: u32, reason: FinishReason) -> Option<FinishReason> {
        if choice >= 128 {
            return None;
        }
        self.done |= 1u128 << choice;
        if choice == 0 {
            self.first_reason = Some(reason);
        }
        let all = if self.n == 128 {
            u128::MAX
        } else {
            (1u128 << self.n) - 1
        };
        (self.done & all == all).then(|| self.first_reason.clone().unwrap_or(FinishReason::Stop))
    }
}

/// Sends the client the pieces of its tool calls in `relay`, emptying it.
/// Err: the client left.
async fn relay_calls(out: &mut Out, relay: &mut Vec<ToolCallDelta>) -> Result<(), ()> {
    for d in relay.drain(..) {
        out.send(Event::ToolCallDelta(Box::new(d))).await?;
    }
    Ok(())
}

/// The ending of a round whose provider sent more opaque reasoning data
/// than any model writes.
fn opaque_flood() -> RoundEnd {
    warn!(
        max = MAX_OPAQUE_BYTES,
        "provider sent too many bytes of reasoning signatures; stream cut"
    );
    RoundEnd::Ended(Ending::Failed {
        code: ErrorCode::Upstream,
        message: format!(
            "the provider sent more than {MAX_OPAQUE_BYTES} bytes of reasoning signatures or redacted reasoning in one answer; the stream was cut"
        ),
        finish: "error",
    })
}

/// The ending of a round cut for generating too much.
fn ceiling_cut(max_tokens: u64, guard: u64, what: &str) -> RoundEnd {
    warn!(
        max_tokens,
        guard, what, "provider generated past the token ceiling; stream cut"
    );
    RoundEnd::Ended(Ending::Failed {
        code: ErrorCode::TokenCeiling,
        message: format!(
            "the provider generated more than {guard} tokens ({what}, counted by sluice) for a limit of {max_tokens}; the stream was cut"
        ),
        finish: "length",
    })
}

/// One model call's stream: relays text, assembles tool calls, and enforces
/// the idle and total deadlines and the completion ceiling.
///
/// Everything the model generates counts against the ceiling: text, tool
/// call names and arguments (whether or not the pipeline declares tools),
/// reasoning and refusals. The provider was sent `max_tokens` and enforces
/// it by its own count; Sluice cuts only past
/// [`tokens::completion_guard`], a margin above it for tokenizers that
/// count differently, so an honest answer is never cut.
///
/// With `n` choices the provider may generate `n × max_tokens` in all,
/// so the guard is that of `n × max_tokens`, counted over every choice
/// together: a choice that floods is cut once the call as a whole passes
/// it. The call has finished once every choice has.
#[allow(clippy::too_many_arguments)]
pub(super) async fn stream_round(
    cx: &RunContext,
    pipeline: &Pipeline,
    ask: &super::Ask,
    mut stream: ChunkStream,
    first: Chunk,
    max_tokens: u32,
    out: &mut Out,
    tally: &mut Tally,
    idle: Duration,
) -> RoundEnd {
    let n = ask.params.choices();
    let max_tokens = u64::from(max_tokens).saturating_mul(u64::from(n));
    let guard = tokens::completion_guard(max_tokens);
    let mut finish: Option<FinishReason> = None;
    let mut said: Vec<Part> = Vec::new();
    let mut opaque_bytes = 0usize;
    // Which choice the chunks are for, and which have finished (n > 1).
    let mut choice: u32 = 0;
    let mut choices = Choices::new(n);
    let wants_logprobs = ask.params.logprobs || ask.params.top_logprobs.is_some();
    let mut logprobs_bytes: u64 = 0;
    let mut calls = Calls::default();
    let wants_tools = !pipeline.tools.is_empty();
    let for_client = |name: &str| ask.is_for_client(name, pipeline);
    // What the client is to be sent of its tool calls after a chunk
    // (kept across chunks for its capacity).
    let mut relay: Vec<ToolCallDelta> = Vec::new();
    // A finished round: the answer, or the tool calls the model asked for
    // (run by the tool loop, or reported when the pipeline has no tools).
    let finished = |finish: FinishReason, said: Vec<Part>, calls: Calls| {
        if calls.is_empty() {
            RoundEnd::Ended(Ending::Finished(finish))
        } else {
            let (calls, for_client) = calls.assemble();
            RoundEnd::ToolCalls {
                calls,
                for_client,
                said,
                finish,
            }
        }
    };
    let mut next = Some(first);
    let mut first_delta = true;
    let mut last_chunk_at = Instant::now();
    let mut keepalive_at = last_chunk_at + out.keepalive;
    // One timer for the deadlines and the keep-alive, moved as they move:
    // moving a timer later does not touch the timer wheel, while a new
    // pair of timers for every chunk would register and cancel both.
    let timer = tokio::time::sleep_until(keepalive_at);
    tokio::pin!(timer);
    loop {
        let chunk = match next.take() {
            Some(c) => c,
            None => {
                let idle_deadline = last_chunk_at + idle;
                let deadline = idle_deadline.min(out.total_deadline);
                // On a tie the deadline wins: the request is over.
                let deadline_first = deadline <= keepalive_at;
                let wake = if deadline_first {
                    deadline
                } else {
                    keepalive_at
                };
                if timer.deadline() != wake {
                    timer.as_mut().reset(wake);
                }
                tokio::select! {
                    biased;
                    _ = out.tx.closed() => return RoundEnd::Ended(Ending::ClientClosed),
                    _ = cx.force_stop.cancelled() => {
                        drop(stream);
                        return RoundEnd::Ended(Ending::Failed {
                            code: ErrorCode::Shutdown,
                            message: "the server is shutting down".into(),
                            finish: "error",
                        });
                    }
                    _ = &mut timer => {
                        if !deadline_first {
                            if out.send(Event::KeepAlive).await.is_err() {
                                return RoundEnd::Ended(Ending::ClientClosed);
                            }
                            keepalive_at = Instant::now() + out.keepalive;
                            continue;
                        }
                        drop(stream);
                        if let Some(reason) = finish {
                            // The answer is complete; only the usage chunk
                            // or the terminator is missing.
                            debug!("upstream silent after finishing; usage will be estimated");
                            return finished(reason, said, calls);
                        }
                        let (code, what, d) = if deadline == out.total_deadline {
                            (ErrorCode::TimeoutTotal, "the request", pipeline.timeouts.total)
                        } else {
                            (ErrorCode::TimeoutIdle, "the provider was silent for", idle)
                        };
                        let message = if code == ErrorCode::TimeoutTotal {
                            format!("{what} took longer than {}", humantime::format_duration(d))
                        } else {
                            format!("{what} {}", humantime::format_duration(d))
                        };
                        return RoundEnd::Ended(Ending::Failed { code, message, finish: "error" });
                    }
                    item = stream.next() => match item {
                        Some(Ok(c)) => c,
                        Some(Err(ProviderError::Truncated)) | None if finish.is_some() => {
                            debug!("upstream ended without usage or terminator after finishing");
                            return finished(finish.unwrap_or(FinishReason::Stop), said, calls);
                        }
                        None => {
                            return RoundEnd::Ended(Ending::Failed {
                                code: ErrorCode::Upstream,
                                message: ProviderError::Truncated.to_string(),
                                finish: "error",
                            });
                        }
                        Some(Err(e)) => {
                            drop(stream);
                            warn!(error = %e, source = ?e.source_kind(), "provider stream failed");
                            return RoundEnd::Ended(Ending::Upstream(e));
                        }
                    },
                }
            }
        };
        // Once the provider said it has finished, only its usage and its
        // end marker may follow. Anything generated after that is not
        // relayed and does not hold the stream: the round ends here, and
        // dropping the stream closes the connection (it never returns to
        // the pool with the provider still writing into it).
        // With several choices the same holds of each: what a finished
        // choice still sends ends the call (the others end with its reason).
        let settled = finish.as_ref().or_else(|| {
            (n > 1 && choices.is_done(choice))
                .then_some(choices.first_reason.as_ref().unwrap_or(&FinishReason::Stop))
        });
        if let Some(reason) = settled
            && !matches!(
                chunk,
                Chunk::Usage(_) | Chunk::End | Chunk::Finish(_) | Chunk::Choice(_)
            )
        {
            drop(stream);
            debug!("provider kept generating after its finish reason; stream ended there");
            return finished(reason.clone(), said, calls);
        }
        last_chunk_at = Instant::now();
        match chunk {
            Chunk::Delta(delta) => {
                if let Err(allowed) = tally.generated.push(&delta, guard) {
                    // The provider went past max_tokens and the margin:
                    // stop it here.
                    drop(stream);
                    if allowed > 0 {
                        let cut = tokens::truncate(&delta, allowed);
                        tally.generated.push_unchecked(&cut);
                        if !cut.is_empty() && out.send(Event::Delta(cut)).await.is_err() {
                            return RoundEnd::Ended(Ending::ClientClosed);
                        }
                    }
                    return ceiling_cut(max_tokens, guard, "text");
                }
                // Only a round that may end in tool calls needs its text
                // again (the conversation goes on with it).
                if wants_tools {
                    say(&mut said, Piece::Text(&delta));
                }
                tally.trace.text(&delta);
                if out.send(Event::Delta(delta)).await.is_err() {
                    return RoundEnd::Ended(Ending::ClientClosed);
                }
                if std::mem::take(&mut first_delta) {
                    tokio::task::yield_now().await;
                }
                keepalive_at = Instant::now() + out.keepalive;
            }
            Chunk::Reasoning(t) => {
                if tally.generated.push(&t, guard).is_err() {
                    drop(stream);
                    return ceiling_cut(max_tokens, guard, "reasoning");
                }
                // The provider wants it back when the conversation goes
                // on after a tool call (Anthropic's extended thinking).
                if wants_tools {
                    say(&mut said, Piece::Thinking(&t));
                }
                if out.send(Event::Reasoning(t)).await.is_err() {
                    return RoundEnd::Ended(Ending::ClientClosed);
                }
                keepalive_at = Instant::now() + out.keepalive;
            }
            // Not generated text (the provider does not bill it as output),
            // but the client needs it to hand the reasoning back.
            Chunk::ReasoningSignature(s) => {
                opaque_bytes = opaque_bytes.saturating_add(s.len());
                if opaque_bytes > MAX_OPAQUE_BYTES {
                    return opaque_flood();
                }
                if wants_tools {
                    say(&mut said, Piece::Signature(&s));
                }
                if out.send(Event::ReasoningSignature(s)).await.is_err() {
                    return RoundEnd::Ended(Ending::ClientClosed);
                }
                keepalive_at = Instant::now() + out.keepalive;
            }
            Chunk::RedactedReasoning(data) => {
                opaque_bytes = opaque_bytes.saturating_add(data.len());
                if opaque_bytes > MAX_OPAQUE_BYTES {
                    return opaque_flood();
                }
                if wants_tools {
                    said.push(Part::RedactedThinking(data.clone()));
                }
                if out.send(Event::RedactedReasoning(data)).await.is_err() {
                    return RoundEnd::Ended(Ending::ClientClosed);
                }
                keepalive_at = Instant::now() + out.keepalive;
            }
            Chunk::Refusal(t) => {
                if tally.generated.push(&t, guard).is_err() {
                    drop(stream);
                    return ceiling_cut(max_tokens, guard, "refusal");
                }
                if out.send(Event::Refusal(t)).await.is_err() {
                    return RoundEnd::Ended(Ending::ClientClosed);
                }
                keepalive_at = Instant::now() + out.keepalive;
            }
            // Taken at the start of the call; a later one changes nothing.
            Chunk::Model(_) => {}
            Chunk::Choice(c) => {
                choice = c;
                if out.send(Event::Choice(c)).await.is_err() {
                    return RoundEnd::Ended(Ending::ClientClosed);
                }
            }
            Chunk::Logprobs(lp) => {
                // Relayed only when asked for: a provider that sends them
                // anyway costs nothing downstream.
                if !wants_logprobs {
                    continue;
                }
                logprobs_bytes = logprobs_bytes.saturating_add(json_len(&lp));
                let most = guard.saturating_mul(LOGPROBS_BYTES_PER_TOKEN);
                if logprobs_bytes > most {
                    drop(stream);
                    warn!(
                        bytes = logprobs_bytes,
                        most, "provider sent too many log probabilities; stream cut"
                    );
                    return RoundEnd::Ended(Ending::Failed {
                        code: ErrorCode::Upstream,
                        message: format!(
                            "the provider sent more than {most} bytes of logprobs for a limit of {max_tokens} tokens; the stream was cut"
                        ),
                        finish: "error",
                    });
                }
                if out.send(Event::Logprobs(Box::new(lp))).await.is_err() {
                    return RoundEnd::Ended(Ending::ClientClosed);
                }
            }
            // Several choices come without tools (refused with `n` > 1):
            // pieces of calls nobody offered cannot be told apart by choice.
            Chunk::ToolCallDelta { .. } if n > 1 => {
                drop(stream);
                warn!("provider sent a tool call for a request of several choices; stream cut");
                return RoundEnd::Ended(Ending::Failed {
                    code: ErrorCode::Upstream,
                    message: "the provider sent a tool call for a request of several choices, which offers no tools".into(),
                    finish: "error",
                });
            }
            // More of a call the provider said was whole: the client was
            // told it ended, so this could only be lost or misplaced.
            Chunk::ToolCallDelta { index, .. } if calls.ended(index) => {
                drop(stream);
                warn!(
                    index,
                    "provider sent more of a tool call it had ended; stream cut"
                );
                return RoundEnd::Ended(Ending::Failed {
                    code: ErrorCode::Upstream,
                    message:
                        "the provider sent more of a tool call after ending it; the stream was cut"
                            .into(),
                    finish: "error",
                });
            }
            Chunk::ToolCallDelta {
                index,
                id,
                name,
                arguments,
            } => {
                if !calls.contains(index) {
                    if calls.len() >= MAX_TOOL_CALLS {
                        drop(stream);
                        warn!(
                            max = MAX_TOOL_CALLS,
                            "provider opened too many tool calls; stream cut"
                        );
                        return RoundEnd::Ended(Ending::Failed {
                            code: ErrorCode::Upstream,
                            message: format!(
                                "the provider asked for more than {MAX_TOOL_CALLS} tool calls in one answer; the stream was cut"
                            ),
                            finish: "error",
                        });
                    }
                    tally.generated.push_framing(TOOL_CALL_FRAMING_TOKENS);
                }
                // Names and arguments are generated tokens too, and what
                // the round holds of them is bounded by the ceiling.
                let over = [name.as_deref().unwrap_or_default(), &arguments]
                    .into_iter()
                    .any(|s| !s.is_empty() && tally.generated.push(s, guard).is_err());
                if over {
                    drop(stream);
                    return ceiling_cut(max_tokens, guard, "tool calls");
                }
                // A call for the client is relayed as it arrives, from the
                // fragment that completes its name; the pipeline's own
                // calls are only assembled here and run by the tool loop.
                if let Err(Malformed(message)) =
                    calls.push(index, id, name, arguments, &for_client, &mut relay)
                {
                    drop(stream);
                    warn!(%message, "provider sent a malformed tool call; stream cut");
                    return RoundEnd::Ended(Ending::Failed {
                        code: ErrorCode::Upstream,
                        message,
                        finish: "error",
                    });
                }
                if !relay.is_empty() {
                    if relay_calls(out, &mut relay).await.is_err() {
                        return RoundEnd::Ended(Ending::ClientClosed);
                    }
                    keepalive_at = Instant::now() + out.keepalive;
                }
            }
            Chunk::ToolCallEnd(index) => {
                // Its arguments are whole, and so is its name: a client's
                // call held for its name goes out, then its end.
                let ended = calls.end(index, &for_client, &mut relay);
                if relay_calls(out, &mut relay).await.is_err() {
                    return RoundEnd::Ended(Ending::ClientClosed);
                }
                if let Some(i) = ended
                    && out.send(Event::ToolCallEnd(i)).await.is_err()
                {
                    return RoundEnd::Ended(Ending::ClientClosed);
                }
            }
            Chunk::Finish(reason) if n == 1 => {
                // Every name is whole now: a client's call held for its
                // name goes out before the answer ends.
                calls.finish(&for_client, &mut relay);
                if relay_calls(out, &mut relay).await.is_err() {
                    return RoundEnd::Ended(Ending::ClientClosed);
                }
                finish = Some(reason);
            }
            Chunk::Finish(reason) => {
                if choices.is_done(choice) {
                    continue;
                }
                let ev = Event::ChoiceDone {
                    choice,
                    finish_reason: reason.as_str().to_string(),
                };
                finish = choices.finish(choice, reason);
                if out.send(ev).await.is_err() {
                    return RoundEnd::Ended(Ending::ClientClosed);
                }
            }
            Chunk::Usage(u) => tally.provider_usage = Some(u),
            Chunk::End => {
                drop(stream);
                return match finish {
                    Some(reason) => finished(reason, said, calls),
                    None => RoundEnd::Ended(Ending::Failed {
                        code: ErrorCode::Upstream,
                        message: "the provider ended the stream without a finish reason".into(),
                        finish: "error",
                    }),
                };
            }
        }
    }
}
