//! Phase 2 of a request: the stream is committed; relay upstream chunks
//! as events while enforcing the idle and total deadlines, the token
//! ceiling and keep-alives, and noticing a client that left.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::events::{ErrorCode, Event};
use super::{RunContext, Tally};
use crate::compile::Pipeline;
use crate::provider::{Chunk, ChunkStream, FinishReason, ProviderError};
use crate::tokens;

pub(super) enum Ending {
    Finished(String),
    Failed {
        code: ErrorCode,
        message: String,
        finish: &'static str,
    },
    ClientClosed,
}

/// The client side of the stream: sends events, bounded by the total
/// deadline, and emits keep-alives while nothing else is sent.
pub(super) struct Out {
    pub tx: mpsc::Sender<Event>,
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

#[allow(clippy::too_many_arguments)]
pub(super) async fn stream_body(
    cx: &RunContext,
    pipeline: &Pipeline,
    mut stream: ChunkStream,
    first: Chunk,
    max_tokens: u32,
    out: &mut Out,
    tally: &mut Tally,
    idle: Duration,
) -> Ending {
    let max_tokens = u64::from(max_tokens);
    let mut finish: Option<FinishReason> = None;
    let mut next = Some(first);
    let mut last_chunk_at = Instant::now();
    let mut keepalive_at = Instant::now() + out.keepalive;
    loop {
        let chunk = match next.take() {
            Some(c) => c,
            None => {
                let idle_deadline = last_chunk_at + idle;
                let deadline = idle_deadline.min(out.total_deadline);
                tokio::select! {
                    biased;
                    _ = out.tx.closed() => return Ending::ClientClosed,
                    _ = cx.force_stop.cancelled() => {
                        drop(stream);
                        return Ending::Failed {
                            code: ErrorCode::Shutdown,
                            message: "the server is shutting down".into(),
                            finish: "error",
                        };
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        drop(stream);
                        if let Some(reason) = finish {
                            // The answer is complete; only the usage chunk
                            // or the terminator is missing.
                            debug!("upstream silent after finishing; usage will be estimated");
                            return Ending::Finished(reason.as_str().to_string());
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
                        return Ending::Failed { code, message, finish: "error" };
                    }
                    _ = tokio::time::sleep_until(keepalive_at) => {
                        if out.send(Event::KeepAlive).await.is_err() {
                            return Ending::ClientClosed;
                        }
                        keepalive_at = Instant::now() + out.keepalive;
                        continue;
                    }
                    item = stream.next() => match item {
                        Some(Ok(c)) => c,
                        Some(Err(ProviderError::Truncated)) | None if finish.is_some() => {
                            debug!("upstream ended without usage or terminator after finishing");
                            return Ending::Finished(finish.map(|f| f.as_str().to_string()).unwrap_or_default());
                        }
                        None => {
                            return Ending::Failed {
                                code: ErrorCode::Upstream,
                                message: ProviderError::Truncated.to_string(),
                                finish: "error",
                            };
                        }
                        Some(Err(e)) => {
                            drop(stream);
                            warn!(error = %e, source = ?e.source_kind(), "provider stream failed");
                            return Ending::Failed {
                                code: ErrorCode::Upstream,
                                message: e.to_string(),
                                finish: "error",
                            };
                        }
                    },
                }
            }
        };
        last_chunk_at = Instant::now();
        match chunk {
            Chunk::Delta(text) => {
                if finish.is_some() {
                    continue;
                }
                let n = tokens::count(&text);
                if tally.completion_counted + n > max_tokens {
                    // The provider went past max_tokens: stop it here.
                    drop(stream);
                    let allowed = max_tokens - tally.completion_counted;
                    if allowed > 0 {
                        let cut = tokens::truncate(&text, allowed);
                        tally.completion_counted += tokens::count(&cut);
                        if !cut.is_empty() && out.send(Event::Delta(cut)).await.is_err() {
                            return Ending::ClientClosed;
                        }
                    }
                    warn!(
                        max_tokens,
                        "provider streamed past the token ceiling; stream cut"
                    );
                    return Ending::Failed {
                        code: ErrorCode::TokenCeiling,
                        message: format!(
                            "the provider went past the ceiling of {max_tokens} completion tokens; the stream was cut"
                        ),
                        finish: "length",
                    };
                }
                tally.completion_counted += n;
                if out.send(Event::Delta(text)).await.is_err() {
                    return Ending::ClientClosed;
                }
                keepalive_at = Instant::now() + out.keepalive;
            }
            Chunk::ToolCallDelta { .. } => {
                debug!("ignoring a tool call: this pipeline declares no tools");
            }
            Chunk::Finish(reason) => finish = Some(reason),
            Chunk::Usage(u) => tally.provider_usage = Some(u),
            Chunk::End => {
                drop(stream);
                return match finish {
                    Some(reason) => Ending::Finished(reason.as_str().to_string()),
                    None => Ending::Failed {
                        code: ErrorCode::Upstream,
                        message: "the provider ended the stream without a finish reason".into(),
                        finish: "error",
                    },
                };
            }
        }
    }
}
